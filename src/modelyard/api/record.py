"""The per-request record the observers read (ledger, metrics, access log, finalizers).

Live HTTP requests and batch lines fill the same record the same way, so a
batch line is accounted, metered and settled exactly like a live request.
"""

from __future__ import annotations

from typing import Any

from modelyard.pipeline.types import Request, Response


def note_request(state: dict[str, Any], request: Request, response: Response | None = None) -> None:
    """Copy what the pipeline decided so far into the record ``state``."""
    state.update(request=request, requested_model=request.model, workload=request.workload, session=request.session, attempts=len(request.attempts))
    if response is not None:
        state.update(served_model=response.model, deployment=response.deployment, route_reason=response.route_reason)
