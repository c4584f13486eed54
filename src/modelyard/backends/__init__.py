"""Backends: one small contract (:class:`~modelyard.backends.base.Backend`), many adapters."""
