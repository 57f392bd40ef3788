"""Robustness metrics, registered by name on import."""
