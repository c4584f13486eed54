"""Offline tooling: load public outcome tables, embed prompts, train and evaluate routers."""
