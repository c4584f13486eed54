"""One deployment's scheduler: plain data in, decisions out; no I/O, no clock of its own.

- At most ``capacity`` tickets run at once.
- Classes are served in strict priority (interactive, agent, embedding, background,
  batch) with aging: a ticket's rank improves by one class per ``aging_s`` waited,
  so nothing starves forever.
- Within a class, tenants share by weighted fair queuing: the tenant with the
  least weighted service so far goes next.
- Admission is deadline-aware: a ticket whose estimated wait already exceeds
  its class's time-to-first-token objective is refused up front (the caller
  may try another deployment, else answers 429 with an honest Retry-After).
- The queue is bounded: when full, the lowest-ranked queued ticket is shed to
  make room for a better one; otherwise the newcomer is refused.
- Slots are reserved: deferrable classes (embedding, background, batch) hold at
  most ``capacity - reserved_slots`` slots, so an interactive or agent request
  always finds one free. An engine that batches continuously queues requests
  it cannot start inside itself, where nobody can reprioritize them; the
  reservation keeps the urgent ones out of that queue.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

CLASS_RANK: dict[str, int] = {"interactive": 0, "agent": 1, "embedding": 2, "background": 3, "batch": 4}
URGENT_RANK = CLASS_RANK["agent"]  # this rank and better may use the reserved slots


@dataclass(frozen=True, slots=True)
class SchedulerPolicy:
    """Knobs of a deployment's scheduler (see docs/scheduling.md)."""

    max_queue: int = 64
    aging_s: float = 30.0
    ttft_objective_s: Mapping[str, float] = field(default_factory=lambda: {"interactive": 10.0, "agent": 30.0})
    tenant_weights: Mapping[str, float] = field(default_factory=dict)
    default_service_s: float = 2.0
    service_ewma_alpha: float = 0.2
    reserved_slots: int = 0  # slots only interactive and agent work may hold (capped at capacity - 1)


@dataclass(slots=True)
class Ticket:
    """One request waiting for (or holding) a slot."""

    id: str
    workload: str
    tenant: str = "default"
    enqueued_at: float = 0.0

    @property
    def rank(self) -> int:
        return CLASS_RANK.get(self.workload, CLASS_RANK["background"])


class Verdict(enum.Enum):
    RUN = "run"  # start now
    QUEUED = "queued"  # wait for a slot
    REJECTED = "rejected"  # refuse now, with retry_after


@dataclass(frozen=True, slots=True)
class Admission:
    verdict: Verdict
    retry_after_s: float = 0.0
    reason: str = ""
    shed: Ticket | None = None  # a queued ticket that lost its place to this one


class DeploymentScheduler:
    """Queues and slots of one deployment."""

    def __init__(self, policy: SchedulerPolicy, capacity: int) -> None:
        self.policy = policy
        self.capacity = capacity
        self.running: dict[str, int] = {}  # ticket id -> class rank
        self.queues: dict[int, dict[str, deque[Ticket]]] = {}
        self.served: dict[tuple[int, str], float] = {}
        self.service_s = policy.default_service_s
        # A continuously batching engine serves a request more slowly the more it runs
        # beside it: service time is learned per number of requests running.
        self.service_by_running: dict[int, float] = {}

    # -- what is waiting -----------------------------------------------------------------
    def queued(self) -> int:
        return sum(len(q) for tenants in self.queues.values() for q in tenants.values())

    def depth_by_class(self) -> dict[str, int]:
        names = {rank: name for name, rank in CLASS_RANK.items()}
        return {names[rank]: sum(len(q) for q in tenants.values()) for rank, tenants in self.queues.items()}

    def estimated_wait_s(self, ticket: Ticket, now: float) -> float:
        """Seconds until ``ticket`` would start: everything ranked at or above it, spread over the slots."""
        if self.may_start(ticket) and not self._heads():
            return 0.0
        ahead = sum(len(q) for rank, tenants in self.queues.items() if rank <= ticket.rank for q in tenants.values())
        slots = self.capacity if ticket.rank <= URGENT_RANK else self.deferrable_limit()
        # Whoever waits starts when a full deployment frees a slot: service time at full load.
        return (ahead + 1) * self.service_at(self.capacity) / slots

    def service_at(self, running: int) -> float:
        """Learned service time with ``running`` requests in flight: the nearest measured load, else the overall average."""
        if not self.service_by_running:
            return self.service_s
        nearest = min(self.service_by_running, key=lambda k: (abs(k - running), -k))
        return self.service_by_running[nearest]

    def deferrable_limit(self) -> int:
        """Slots the deferrable classes may hold together: all but the reserved ones, never none."""
        reserved = min(self.policy.reserved_slots, self.capacity - 1)
        return self.capacity - max(0, reserved)

    def may_start(self, ticket: Ticket) -> bool:
        """A free slot exists for this ticket's class right now."""
        if len(self.running) >= self.capacity:
            return False
        if ticket.rank <= URGENT_RANK:
            return True
        deferrable = sum(1 for rank in self.running.values() if rank > URGENT_RANK)
        return deferrable < self.deferrable_limit()

    # -- decisions --------------------------------------------------------------------------
    def admit(self, ticket: Ticket, now: float) -> Admission:
        ticket.enqueued_at = now
        if self.may_start(ticket) and not self._heads():  # nobody queued could take this slot
            self.running[ticket.id] = ticket.rank
            return Admission(Verdict.RUN)
        wait = self.estimated_wait_s(ticket, now)
        objective = self.policy.ttft_objective_s.get(ticket.workload)
        if objective is not None and wait > objective:
            return Admission(Verdict.REJECTED, retry_after_s=wait, reason=f"estimated wait {wait:.1f}s exceeds the {ticket.workload} objective of {objective:g}s")
        shed = None
        if self.queued() >= self.policy.max_queue:
            worst = self._worst_queued(now)
            if worst is None or self._effective_rank(worst, now) <= ticket.rank:
                return Admission(Verdict.REJECTED, retry_after_s=wait, reason="the queue is full")
            self._remove(worst)
            shed = worst
        self.queues.setdefault(ticket.rank, {}).setdefault(ticket.tenant, deque()).append(ticket)
        return Admission(Verdict.QUEUED, shed=shed)

    def finish(self, ticket_id: str, service_s: float | None, now: float) -> list[Ticket]:
        """A running ticket ended; returns the tickets that start now (in order)."""
        was_running = len(self.running)
        self.running.pop(ticket_id, None)
        if service_s is not None:
            a = self.policy.service_ewma_alpha
            self.service_s = a * service_s + (1 - a) * self.service_s
            if was_running:
                before = self.service_by_running.get(was_running, service_s)
                self.service_by_running[was_running] = a * service_s + (1 - a) * before
        return self.start_ready(now)

    def start_ready(self, now: float) -> list[Ticket]:
        started = []
        while len(self.running) < self.capacity:
            ticket = self._next(now)
            if ticket is None:
                break
            self._remove(ticket)
            self.running[ticket.id] = ticket.rank
            started.append(ticket)
        return started

    def cancel(self, ticket_id: str) -> bool:
        """Drop a queued ticket (its caller went away). False if it was not queued."""
        for tenants in self.queues.values():
            for q in tenants.values():
                for t in q:
                    if t.id == ticket_id:
                        self._remove(t)
                        return True
        return False

    def resize(self, capacity: int, now: float) -> list[Ticket]:
        self.capacity = capacity
        return self.start_ready(now)

    # -- internals ----------------------------------------------------------------------------
    def _effective_rank(self, ticket: Ticket, now: float) -> float:
        return ticket.rank - (now - ticket.enqueued_at) / self.policy.aging_s

    def _heads(self) -> list[Ticket]:
        """The first ticket of every (class, tenant) queue that has a slot it may take."""
        return [q[0] for tenants in self.queues.values() for q in tenants.values() if q and self.may_start(q[0])]

    def _next(self, now: float) -> Ticket | None:
        heads = self._heads()
        if not heads:
            return None
        # Aging decides which class goes next; fair share decides which tenant within it.
        rank = min(heads, key=lambda t: (self._effective_rank(t, now), t.enqueued_at)).rank
        same_class = [t for t in heads if t.rank == rank]
        choice = min(same_class, key=lambda t: (self.served.get((rank, t.tenant), 0.0), t.enqueued_at))
        weight = self.policy.tenant_weights.get(choice.tenant, 1.0) or 1.0
        # A tenant returning after idling starts level with the busiest, not with banked credit.
        floor = min((self.served.get((rank, t.tenant), 0.0) for t in same_class), default=0.0)
        self.served[(rank, choice.tenant)] = max(self.served.get((rank, choice.tenant), 0.0), floor) + 1.0 / weight
        return choice

    def _worst_queued(self, now: float) -> Ticket | None:
        tails = [q[-1] for tenants in self.queues.values() for q in tenants.values() if q]
        return max(tails, key=lambda t: (self._effective_rank(t, now), t.enqueued_at), default=None)

    def _remove(self, ticket: Ticket) -> None:
        tenants = self.queues[ticket.rank]
        q = tenants[ticket.tenant]
        q.remove(ticket)
        if not q:
            del tenants[ticket.tenant]
        if not tenants:
            del self.queues[ticket.rank]
