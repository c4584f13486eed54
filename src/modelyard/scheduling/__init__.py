"""Scheduling decisions with no I/O: queues, priorities, fair share, admission, batching."""
