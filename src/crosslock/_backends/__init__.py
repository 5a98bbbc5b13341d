"""Backends: one module per kind of lock, behind the small contract in ``_base``."""
