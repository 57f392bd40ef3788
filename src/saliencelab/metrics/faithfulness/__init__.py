"""Faithfulness metrics, registered by name on import."""
