"""stacklock: one pinned GPU serving stack, identical in every environment."""

__version__ = "0.1.0"
