"""Localisation metrics, registered by name on import."""
