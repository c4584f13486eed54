"""The request pipeline: ordered stages around one handler type."""
