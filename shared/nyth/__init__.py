"""Nyth: shared protocol core (sans-IO) and common helpers used by every service."""

__version__ = "0.1.0"
