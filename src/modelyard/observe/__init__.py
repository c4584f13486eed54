"""Observability beside the request path: metrics and structured logs."""
