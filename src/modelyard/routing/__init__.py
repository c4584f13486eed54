"""Routing decisions: which model and which deployment. Plain data in, decisions out; no I/O."""
