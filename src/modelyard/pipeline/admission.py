"""The async side of scheduling: one :class:`DeploymentScheduler` per deployment,
and the waiting callers it decides about."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from modelyard.backends.registry import deployment_slots
from modelyard.config import DeploymentConfig, FleetConfig
from modelyard.errors import Overloaded, UpstreamTimeout
from modelyard.pipeline.types import Request
from modelyard.scheduling.scheduler import DeploymentScheduler, SchedulerPolicy, Ticket, Verdict


def scheduler_policy(config: FleetConfig, deployment: DeploymentConfig) -> SchedulerPolicy:
    """The policy of a deployment's scheduler, from the fleet's scheduling settings (the live gate and the simulator both use it)."""
    classes = config.scheduling.classes
    # Slots are held back for interactive and agent work only where such work may come.
    reserves = classes and (deployment.serves("interactive") or deployment.serves("agent"))
    return SchedulerPolicy(
        max_queue=deployment.max_queue,
        aging_s=config.scheduling.aging_s,
        ttft_objective_s=config.scheduling.ttft_objective_s if classes else {},
        tenant_weights=config.scheduling.tenant_weights,
        reserved_slots=config.scheduling.reserved_slots if reserves else 0,
    )


class SchedulerGate:
    """Acquire a slot on a deployment (maybe after queueing), release it when done."""

    def __init__(self, config: FleetConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.classes = config.scheduling.classes
        self.schedulers: dict[str, DeploymentScheduler] = {}
        for model in config.models:
            for d in model.deployments:
                self.schedulers[d.name] = DeploymentScheduler(scheduler_policy(config, d), deployment_slots(d))
        self.waiting: dict[str, asyncio.Future[None]] = {}
        self.numbers = itertools.count(1)

    async def acquire(self, deployment: str, request: Request) -> Ticket:
        scheduler = self.schedulers[deployment]
        workload = request.workload if self.classes else "interactive"
        ticket = Ticket(f"t{next(self.numbers)}", workload, request.tenant)  # unique within this gate, all a ticket id needs
        admission = scheduler.admit(ticket, self.clock())
        if admission.shed is not None:
            self._refuse(admission.shed, scheduler)
        if admission.verdict == Verdict.RUN:
            return ticket
        if admission.verdict == Verdict.REJECTED:
            raise Overloaded(f"deployment {deployment}: {admission.reason}", retry_after=max(1.0, admission.retry_after_s))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting[ticket.id] = future
        try:
            await asyncio.wait_for(asyncio.shield(future), max(0.0, request.deadline - self.clock()))
        except TimeoutError:
            self._abandon(deployment, ticket, future)
            raise UpstreamTimeout(f"deployment {deployment}: the request's deadline passed while it was queued") from None
        except asyncio.CancelledError:
            self._abandon(deployment, ticket, future)
            raise
        finally:
            self.waiting.pop(ticket.id, None)
        return ticket

    def _abandon(self, deployment: str, ticket: Ticket, future: asyncio.Future[None]) -> None:
        if not self.schedulers[deployment].cancel(ticket.id) and future.done() and future.exception() is None:
            self.release(deployment, ticket, None)  # it had just been given a slot: hand it on

    def _refuse(self, ticket: Ticket, scheduler: DeploymentScheduler) -> None:
        future = self.waiting.pop(ticket.id, None)
        if future is not None and not future.done():
            future.set_exception(Overloaded("shed for higher-priority work", retry_after=max(1.0, scheduler.service_s)))

    def release(self, deployment: str, ticket: Ticket, service_s: float | None) -> None:
        for started in self.schedulers[deployment].finish(ticket.id, service_s, self.clock()):
            future = self.waiting.get(started.id)
            if future is not None and not future.done():
                future.set_result(None)

    def describe(self) -> dict[str, dict[str, object]]:
        return {
            name: {"running": len(s.running), "capacity": s.capacity, "queued": s.depth_by_class(), "service_s": round(s.service_s, 3),
                   "service_s_by_running": {str(k): round(v, 3) for k, v in sorted(s.service_by_running.items())}}
            for name, s in self.schedulers.items()
        }
