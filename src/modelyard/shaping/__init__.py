"""Pure request shaping: cache keys and guards, context trimming, PII detection (no I/O, no clock)."""
