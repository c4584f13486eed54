"""Reliability decisions with no I/O: circuit breakers, backoff, output validation."""
