"""Axiomatic metrics, registered by name on import."""
