"""Complexity metrics, registered by name on import."""
