"""Randomisation metrics, registered by name on import."""
