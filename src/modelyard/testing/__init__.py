"""Test and benchmark helpers that are real servers, not stubs."""
