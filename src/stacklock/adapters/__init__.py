"""Thin adapters: the only code that talks to the outside world."""
