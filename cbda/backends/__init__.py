"""Backends: one module each, all meeting docs/semantics.md exactly. ``cbda.api.dispatch`` picks one."""
