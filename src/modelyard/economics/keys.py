"""What an API key may do, as plain data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyPolicy:
    """What one key may do (None: no limit)."""

    key_id: str
    tenant: str
    allowed_models: tuple[str, ...] = ()  # empty: every model
    max_class: str | None = None  # the best workload class a header may claim
    rpm: int | None = None
    tpm: int | None = None
    tenant_rpm: int | None = None
    tenant_tpm: int | None = None

    def allows_model(self, model: str) -> bool:
        return not self.allowed_models or model in self.allowed_models
