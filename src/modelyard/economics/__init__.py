"""Economics with no I/O: what each request cost."""
