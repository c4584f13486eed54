"""Persistence behind one interface (SQLite embedded by default)."""
