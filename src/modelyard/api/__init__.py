"""The OpenAI-compatible HTTP surface. Knows HTTP; knows nothing else."""
