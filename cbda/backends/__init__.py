"""Backends: one module each, all meeting DESIGN §1 exactly. ``cbda.api.dispatch`` picks one."""
