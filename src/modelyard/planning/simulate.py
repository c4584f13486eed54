"""A discrete-event simulation of a trace through modelyard's own decisions.

What is real: the deployment picker (balancer, breakers, session affinity),
the retry and failover policy, every deployment's scheduler (classes, fair
share, reserved slots, deadline-aware admission, shedding), the router's
rules, tenants' rate limits (``tenant_limits``: the server's own limiter) and
the cost code: the objects the live server uses, driven by a simulated
clock. What is modelled: the engines (:mod:`.replicas`, from ``modelyard
profile`` measurements) and the gateway's fixed overhead.

Hedging is simulated as the dispatcher does it: after the model's hedge delay
without a first token, a copy goes to another deployment the picker chooses;
the first to answer wins and the other is cancelled (and paid for).

Left out (docs/planning.md): mid-stream stalls, API keys' own limits,
budgets, cascades' second tries, and prompts (a learned alias is routed by a
given split, since a trace has no text).
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from modelyard.backends.registry import deployment_slots
from modelyard.config import FleetConfig, ModelConfig
from modelyard.economics.cost import attempt_cost
from modelyard.economics.ratelimit import RateLimiter, Reservation
from modelyard.errors import ModelyardError, Overloaded, UpstreamTimeout
from modelyard.pipeline.admission import scheduler_policy
from modelyard.pipeline.failover import Failover, FailoverInputs, Pause, TryDeployment, failover
from modelyard.pipeline.picker import DeploymentPicker
from modelyard.planning import replicas as sim_replicas
from modelyard.planning.engine_model import EngineModel
from modelyard.planning.ledger_profile import draw
from modelyard.planning.replay import synthesize_prompt
from modelyard.planning.traces import BLOCK_TOKENS, TraceRequest
from modelyard.protocol import Usage
from modelyard.routing.router import PromptFeatures, resolve_model
from modelyard.scheduling.scheduler import DeploymentScheduler, Ticket, Verdict


@dataclass(frozen=True, slots=True)
class SimOptions:
    """What the simulation needs beyond the fleet and the trace."""

    default_model: str = "auto"
    default_workload: str = "interactive"
    splits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # alias -> model -> share
    gateway_overhead_s: float = 0.003  # added to every TTFT and end-to-end time
    cache_hit_rate: float = 0.0  # share of prompt tokens a prefix cache saves
    token_scale: float = 1.0  # how the trace was scaled: the size of its shared-prefix blocks in synthesized prompts
    seed: int = 0
    tenant_limits: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)  # tenant -> (requests, tokens) per minute


@dataclass(slots=True)
class SimRecord:
    """One request's fate: what the live server would log for it."""

    index: int
    arrival_s: float
    tenant: str
    workload: str
    model: str = ""
    deployment: str = ""
    status: int = 0
    ttft_s: float | None = None
    e2e_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    attempts: int = 0


@dataclass(slots=True, eq=False)
class _Live:
    """A request in flight in the simulation."""

    record: SimRecord
    trace: TraceRequest
    steps: Failover
    deadline: float
    deployment: str = ""
    ticket: Ticket | None = None
    seq: sim_replicas.Sequence | None = None
    attempt_started: float = 0.0
    engine_started: float = 0.0
    attempt_no: int = 0  # bumps per attempt; a timer of an older attempt is stale
    reservation: Reservation | None = None  # its tenant's rate-limit reservation, settled when it ends
    model: ModelConfig | None = None  # of the current attempt
    # A hedged copy of the current attempt on another deployment (each points at the other) until one
    # gives a first token: the two share the record, the failover steps and the deadline.
    twin: _Live | None = None


class _SimFleet:
    """The fleet state the picker reads: in-flight counts, everything ready."""

    def __init__(self, names: Sequence[str]) -> None:
        self.outstanding: dict[str, int] = dict.fromkeys(names, 0)

    def is_ready(self, deployment: str) -> bool:
        return True


class Simulation:
    """One run of a trace through a fleet whose engines are models."""

    def __init__(self, config: FleetConfig, engines: Mapping[str, EngineModel], options: SimOptions = SimOptions()) -> None:
        self.config = config
        self.options = options
        self.now = 0.0
        self.rng = random.Random(options.seed)
        self.deployments = {d.name: (m, d) for m in config.models for d in m.deployments if m.kind != "embedding"}
        missing = sorted(set(self.deployments) - set(engines))
        if missing:
            raise ValueError(f"no engine model for deployment(s) {', '.join(missing)}")
        self.fleet = _SimFleet(list(self.deployments))
        self.picker = DeploymentPicker(config, self.fleet, self.clock, self.rng)
        self.limiter = RateLimiter()  # tenants' limits, as one server counts them
        self.replicas = {name: sim_replicas.Replica(engines[name]) for name in self.deployments}
        self.schedulers = {name: DeploymentScheduler(scheduler_policy(config, d), deployment_slots(d)) for name, (_, d) in self.deployments.items()}
        self.classes = config.scheduling.classes
        self.events: list[tuple[float, int, Callable[[], None]]] = []
        self.counter = itertools.count()
        self.by_ticket: dict[str, _Live] = {}
        self.by_seq: dict[int, _Live] = {}
        self.records: list[SimRecord] = []
        self.routes: dict[str, list[str]] = {}
        self.cap_s = config.server.max_request_timeout_s

    def clock(self) -> float:
        return self.now

    # -- the loop ----------------------------------------------------------------------------
    def run(self, trace: Sequence[TraceRequest]) -> list[SimRecord]:
        """Every request's record, in trace order; runs until the last request is answered."""
        self.records = []
        arrivals = iter(enumerate(trace))
        upcoming = next(arrivals, None)
        events = self.events
        while upcoming is not None or events:
            if upcoming is not None and (not events or upcoming[1].arrival_s <= events[0][0]):
                self.now = upcoming[1].arrival_s
                self._arrive(upcoming[0], upcoming[1])
                upcoming = next(arrivals, None)
                continue
            at, _, action = heapq.heappop(events)
            self.now = at
            action()
        return self.records

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self.events, (when, next(self.counter), action))

    # -- a request's life ----------------------------------------------------------------------
    def _arrive(self, index: int, trace: TraceRequest) -> None:
        record = SimRecord(index, trace.arrival_s, trace.tenant or "default", trace.workload or self.options.default_workload,
                           input_tokens=trace.input_tokens, output_tokens=trace.output_tokens)
        self.records.append(record)
        reservation = None
        if record.tenant in self.options.tenant_limits:
            reservation = self._rate_limit(record, index, trace)
            if reservation is None:
                record.status = 429
                return
        try:
            plan = self._route(trace.model or self.options.default_model, index, trace)
        except ModelyardError:
            record.status = 404
            return
        record.model = plan[0]
        deadline = self.now + self.cap_s
        steps = failover(self.config, self.picker, FailoverInputs(plan, deadline, workload=record.workload), self.clock, self.rng)
        live = _Live(record, trace, steps, deadline, reservation=reservation)
        self._step(live, None, first=True)

    def _rate_limit(self, record: SimRecord, index: int, trace: TraceRequest) -> Reservation | None:
        """The tenant's limits, counted by the server's own limiter on the request the live server would see: its
        estimate (a quarter of the prompt's characters plus ``max_tokens``) reserved now, settled to the real count at the end."""
        rpm, tpm = self.options.tenant_limits[record.tenant]
        text = synthesize_prompt(trace, index, max(1, round(BLOCK_TOKENS * self.options.token_scale)))
        tokens = max(1, len(text) // 4) + trace.output_tokens
        if tpm is not None and tokens > tpm:
            return None  # larger than a whole minute's tokens: refused outright, as live
        reservation, _, _ = self.limiter.check([(f"tenant:{record.tenant}", rpm, tpm)], tokens, self.now)
        return reservation

    def _route(self, name: str, index: int, trace: TraceRequest) -> list[str]:
        """The served model and its fallbacks: a named model as is, an alias by its split or by its rules on the prompt replay would send."""
        plan = self.routes.get(name)
        if plan is not None:
            return plan
        if name in self.options.splits:
            chosen = self._split(name)
        elif self.config.model(name) is None and self.config.alias(name) is not None:
            text = synthesize_prompt(trace, index, max(1, round(BLOCK_TOKENS * self.options.token_scale)))
            chosen = resolve_model(name, self.config, PromptFeatures(text=text)).model
        else:
            chosen = resolve_model(name, self.config, PromptFeatures(text="")).model
        model = self.config.model(chosen)
        plan = [chosen, *(model.fallbacks if model else ())]
        if self.config.model(name) is not None:
            self.routes[name] = plan  # a named model's plan never changes
        return plan

    def _split(self, alias: str) -> str:
        shares = self.options.splits[alias]
        return self.rng.choices(list(shares), weights=list(shares.values()), k=1)[0]

    def _step(self, live: _Live, error: ModelyardError | None, first: bool = False) -> None:
        try:
            step = next(live.steps) if first else live.steps.send(error)
        except ModelyardError as final:
            self._end(live, _status(final))
            return
        if isinstance(step, Pause):
            self._at(self.now + step.seconds, lambda: self._step(live, None))
        else:
            self._try(live, step)

    def _try(self, live: _Live, step: TryDeployment) -> None:
        name = step.deployment
        live.deployment, live.attempt_started, live.model = name, self.now, step.model
        live.attempt_no += 1
        live.record.attempts += 1
        live.record.deployment, live.record.model = name, step.model.name
        scheduler = self.schedulers[name]
        workload = live.record.workload if self.classes else "interactive"
        ticket = Ticket(str(next(self.counter)), workload, live.record.tenant)
        live.ticket = ticket
        admission = scheduler.admit(ticket, self.now)
        if admission.shed is not None:
            self._shed(admission.shed, scheduler)
        if admission.verdict == Verdict.REJECTED:
            live.ticket = None
            self._attempt_failed(live, Overloaded(f"deployment {name}: {admission.reason}", retry_after=max(1.0, admission.retry_after_s)))
            return
        limit = min(self.deployments[name][1].timeouts.first_token_s, live.deadline - self.now)
        attempt_no = live.attempt_no
        self._at(self.now + max(0.0, limit), lambda: self._first_token_late(live, attempt_no))
        delay = self.picker.hedge_delay_s(step.model, name) if live.twin is None else None
        if delay is not None:
            self._at(self.now + delay, lambda: self._hedge(live, attempt_no))
        if admission.verdict == Verdict.RUN:
            self._start(live)
        else:
            self.by_ticket[ticket.id] = live

    def _start(self, live: _Live) -> None:
        trace = live.trace
        engine = self.replicas[live.deployment].engine
        prompt = int(trace.input_tokens * (1.0 - self.options.cache_hit_rate)) + engine.prompt_overhead_tokens
        prefill_s = engine.prefill_s(prompt)
        tokens = float(max(0, trace.output_tokens - 1))
        if engine.ttft_jitter or engine.interval_jitter:  # a hosted API's own spread, from its ledger history
            prefill_s *= draw(engine.ttft_jitter, self.rng.random())
            tokens *= draw(engine.interval_jitter, self.rng.random())  # more tokens at the fitted rate: a slower answer
        seq = sim_replicas.Sequence(next(self.counter), prefill_s, tokens, prompt_token_s=prefill_s / max(1, prompt))
        live.seq, live.engine_started = seq, self.now
        self.by_seq[seq.key] = live
        self.fleet.outstanding[live.deployment] += 1
        replica = self.replicas[live.deployment]
        replica.add(seq, self.now)
        self._wake(live.deployment)

    def _wake(self, deployment: str) -> None:
        replica = self.replicas[deployment]
        at, seq = replica.next_event()
        if seq is None:
            return
        version = replica.version
        self._at(at, lambda: self._engine_event(deployment, version))

    def _engine_event(self, deployment: str, version: int) -> None:
        replica = self.replicas[deployment]
        if replica.version != version:
            return  # the replica changed since this event was planned
        _, seq = replica.next_event()
        if seq is None:
            return
        replica.advance(self.now)
        replica.version += 1
        live = self.by_seq[seq.key]
        if seq.prefill_left_s > 0.0 or seq.first_token_at is None:
            seq.prefill_left_s = 0.0
            seq.first_token_at = self.now
            self.picker.succeeded(deployment, self.now - live.attempt_started)
            if live.twin is not None:  # the hedge is decided: the other copy is cancelled
                loser, live.twin = live.twin, None
                self._abandon(loser)
                live.record.deployment, live.record.model = deployment, self.deployments[deployment][0].name
            live.record.ttft_s = self.now - live.record.arrival_s + self.options.gateway_overhead_s
            if seq.tokens_left > 1e-9:
                self._wake(deployment)
                return
        self._finish(live)

    def _finish(self, live: _Live) -> None:
        name, seq, ticket = live.deployment, live.seq, live.ticket
        assert seq is not None and ticket is not None
        self._release(live, service_s=self.now - live.engine_started)
        record = live.record
        record.e2e_s = self.now - record.arrival_s + self.options.gateway_overhead_s
        record.cost_usd += attempt_cost(self.deployments[name][1].price, Usage(record.input_tokens, record.output_tokens), self.now - live.attempt_started)
        self._end(live, 200)

    def _release(self, live: _Live, service_s: float | None) -> None:
        """Free the attempt's slot (and its engine sequence), and start whoever the scheduler lets in."""
        name, seq, ticket = live.deployment, live.seq, live.ticket
        if seq is not None:
            self.replicas[name].remove(seq, self.now)
            self.by_seq.pop(seq.key, None)
            self.fleet.outstanding[name] -= 1
            live.seq = None
        live.ticket = None
        if ticket is not None:
            for started in self.schedulers[name].finish(ticket.id, service_s, self.now):
                waiting = self.by_ticket.pop(started.id, None)
                if waiting is not None:
                    self._start(waiting)
        self._wake(name)

    def _first_token_late(self, live: _Live, attempt_no: int) -> None:
        if live.attempt_no != attempt_no or live.ticket is None or (live.seq is not None and live.seq.first_token_at is not None):
            return
        name = live.deployment
        limit = self.now - live.attempt_started
        if live.seq is None:  # still queued
            self.schedulers[name].cancel(live.ticket.id)
            self.by_ticket.pop(live.ticket.id, None)
            live.ticket = None
        else:
            self._release(live, service_s=None)
        self._attempt_failed(live, UpstreamTimeout(f"deployment {name} gave no first token within {limit:.1f}s"))

    def _shed(self, ticket: Ticket, scheduler: DeploymentScheduler) -> None:
        live = self.by_ticket.pop(ticket.id, None)
        if live is None:
            return
        live.ticket = None
        live.attempt_no += 1  # its first-token timer is void
        self._attempt_failed(live, Overloaded("shed for higher-priority work", retry_after=max(1.0, scheduler.service_s)))

    def _attempt_failed(self, live: _Live, error: ModelyardError) -> None:
        self.picker.failed(live.deployment, error)
        live.record.cost_usd += attempt_cost(self.deployments[live.deployment][1].price, None, self.now - live.attempt_started)
        twin = live.twin
        if twin is not None:  # one copy of a hedge failed: the request waits on the other
            live.twin = twin.twin = None
            live.attempt_no += 1
            twin.record.deployment, twin.record.model = twin.deployment, self.deployments[twin.deployment][0].name
            return
        self._step(live, error)

    def _hedge(self, live: _Live, attempt_no: int) -> None:
        """The attempt has no first token after the hedge delay: a copy goes to another deployment of the model, as live."""
        if live.attempt_no != attempt_no or live.twin is not None or live.model is None or (live.seq is not None and live.seq.first_token_at is not None):
            return
        if live.ticket is None and live.seq is None:
            return  # the attempt already ended
        second = self.picker.pick(live.model, exclude={live.deployment}, workload=live.record.workload)
        if second is None or second == live.deployment:
            return
        backup = _Live(live.record, live.trace, live.steps, live.deadline, reservation=live.reservation)
        live.twin, backup.twin = backup, live
        self._try(backup, TryDeployment(live.model, second))

    def _abandon(self, live: _Live) -> None:
        """A hedge's losing copy: its queue place or engine sequence is given up, its time paid for, its timers void."""
        live.twin = None
        live.attempt_no += 1
        name = live.deployment
        if live.seq is None and live.ticket is not None:
            self.schedulers[name].cancel(live.ticket.id)
            self.by_ticket.pop(live.ticket.id, None)
            live.ticket = None
        elif live.seq is not None:
            self._release(live, service_s=None)
        self.picker.breakers[name].release_probe()
        live.record.cost_usd += attempt_cost(self.deployments[name][1].price, None, self.now - live.attempt_started)

    def _end(self, live: _Live, status: int) -> None:
        live.record.status = status
        if live.reservation is not None:
            record = live.record
            self.limiter.settle(live.reservation, record.input_tokens + record.output_tokens if status == 200 else 0)
        live.steps.close()

    # -- what the run says ----------------------------------------------------------------------
    def utilization(self, span_s: float) -> dict[str, float]:
        return {name: replica.utilization(self.now, span_s) for name, replica in self.replicas.items()}


def _status(error: ModelyardError) -> int:
    return error.status
