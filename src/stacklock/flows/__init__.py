"""One module per user-facing flow: each composes the core and the adapters."""
