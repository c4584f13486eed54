"""The scheduler with hand-built queues and a hand-driven clock: no I/O, exact decisions."""

from __future__ import annotations

from modelyard.scheduling.scheduler import DeploymentScheduler, SchedulerPolicy, Ticket, Verdict


def sched(capacity: int = 1, **policy: object) -> DeploymentScheduler:
    return DeploymentScheduler(SchedulerPolicy(**policy), capacity)  # type: ignore[arg-type]


def fill(s: DeploymentScheduler, now: float = 0.0) -> None:
    for i in range(s.capacity):
        assert s.admit(Ticket(f"busy{i}", "batch"), now).verdict == Verdict.RUN


def test_runs_at_once_when_a_slot_is_free() -> None:
    s = sched(capacity=2)
    assert s.admit(Ticket("a", "interactive"), 0).verdict == Verdict.RUN
    assert s.admit(Ticket("b", "batch"), 0).verdict == Verdict.RUN
    assert s.admit(Ticket("c", "interactive"), 0).verdict == Verdict.QUEUED


def test_strict_priority_between_classes() -> None:
    s = sched(ttft_objective_s={})
    fill(s)
    for tid, workload in [("b1", "batch"), ("bg", "background"), ("i1", "interactive"), ("e1", "embedding"), ("a1", "agent")]:
        assert s.admit(Ticket(tid, workload), 1).verdict == Verdict.QUEUED
    order = []
    running = "busy0"
    for t in range(5):
        [nxt] = s.finish(running, 1.0, 2 + t * 0.001)
        order.append(nxt.id)
        running = nxt.id
    assert order == ["i1", "a1", "e1", "bg", "b1"]


def test_aging_lets_old_batch_work_through() -> None:
    s = sched(aging_s=10, ttft_objective_s={})
    fill(s)
    s.admit(Ticket("old-batch", "batch"), 0)
    s.admit(Ticket("new-interactive", "interactive"), 45)  # batch has waited 45 s: 4 - 4.5 < 0
    [nxt] = s.finish("busy0", 1.0, 45)
    assert nxt.id == "old-batch"
    s2 = sched(aging_s=10, ttft_objective_s={})
    fill(s2)
    s2.admit(Ticket("young-batch", "batch"), 40)
    s2.admit(Ticket("interactive", "interactive"), 45)
    assert s2.finish("busy0", 1.0, 45)[0].id == "interactive"


def test_weighted_fair_share_between_tenants() -> None:
    s = sched(ttft_objective_s={}, max_queue=100, tenant_weights={"big": 2.0})
    fill(s)
    for i in range(12):
        s.admit(Ticket(f"big{i}", "interactive", tenant="big"), 1)
    for i in range(12):
        s.admit(Ticket(f"small{i}", "interactive", tenant="small"), 2)
    served = []
    running = "busy0"
    for step in range(9):
        [nxt] = s.finish(running, 1.0, 3 + step)
        served.append(nxt.tenant)
        running = nxt.id
    assert served.count("big") == 6 and served.count("small") == 3  # 2:1 by weight, despite big queueing first


def test_fair_share_without_weights_alternates() -> None:
    s = sched(ttft_objective_s={}, max_queue=100)
    fill(s)
    for i in range(5):
        s.admit(Ticket(f"a{i}", "batch", tenant="a"), 1)
    s.admit(Ticket("b0", "batch", tenant="b"), 2)
    s.admit(Ticket("b1", "batch", tenant="b"), 2)
    order, running = [], "busy0"
    for step in range(4):
        [nxt] = s.finish(running, 1.0, 3 + step)
        order.append(nxt.tenant)
        running = nxt.id
    assert order == ["a", "b", "a", "b"]


def test_deadline_aware_admission_rejects_with_honest_retry_after() -> None:
    s = sched(capacity=1, ttft_objective_s={"interactive": 5.0}, default_service_s=2.0)
    fill(s)
    assert s.admit(Ticket("i1", "interactive"), 0).verdict == Verdict.QUEUED  # wait 2 s
    assert s.admit(Ticket("i2", "interactive"), 0).verdict == Verdict.QUEUED  # wait 4 s
    rejected = s.admit(Ticket("i3", "interactive"), 0)  # wait 6 s > 5 s
    assert rejected.verdict == Verdict.REJECTED and rejected.retry_after_s == 6.0
    assert "objective" in rejected.reason
    assert s.admit(Ticket("b", "batch"), 0).verdict == Verdict.QUEUED  # batch has no objective


def test_service_time_estimate_follows_measurements() -> None:
    s = sched(capacity=1, default_service_s=2.0, service_ewma_alpha=0.5)
    fill(s)
    s.finish("busy0", 10.0, 1)
    assert s.service_s == 6.0


def test_bounded_queue_sheds_lowest_class_first() -> None:
    s = sched(max_queue=3, ttft_objective_s={})
    fill(s)
    for tid in ("b1", "b2", "bg"):
        s.admit(Ticket(tid, "batch" if tid.startswith("b") and tid != "bg" else "background"), 1)
    result = s.admit(Ticket("i1", "interactive"), 2)
    assert result.verdict == Verdict.QUEUED and result.shed is not None and result.shed.id == "b2"
    assert s.queued() == 3
    refused = s.admit(Ticket("b3", "batch"), 3)  # nothing worse than a new batch ticket to shed
    assert refused.verdict == Verdict.REJECTED and "full" in refused.reason
    assert s.queued() == 3  # memory stays bounded


def test_cancel_and_resize() -> None:
    s = sched(capacity=1, ttft_objective_s={})
    fill(s)
    s.admit(Ticket("x", "interactive"), 0)
    s.admit(Ticket("y", "interactive"), 0)
    assert s.cancel("x") and not s.cancel("x")
    started = s.resize(3, 1)
    assert [t.id for t in started] == ["y"]
    assert s.depth_by_class() == {}


def test_deferrable_classes_leave_the_reserved_slots_free() -> None:
    s = sched(capacity=4, reserved_slots=1, ttft_objective_s={})
    for i in range(3):
        assert s.admit(Ticket(f"b{i}", "batch"), 0).verdict == Verdict.RUN
    # The fourth slot is free, but only urgent work may take it.
    assert s.admit(Ticket("bg", "background"), 0).verdict == Verdict.QUEUED
    assert s.admit(Ticket("e", "embedding"), 0).verdict == Verdict.QUEUED
    assert s.estimated_wait_s(Ticket("probe", "interactive"), 0) == 0.0
    assert s.admit(Ticket("i", "interactive"), 0).verdict == Verdict.RUN
    # A finished batch line frees a deferrable slot: the best deferrable ticket takes it.
    assert [t.id for t in s.finish("b0", 1.0, 1)] == ["e"]
    # The interactive one leaves: its slot stays reserved, nothing deferrable starts.
    assert s.finish("i", 1.0, 2) == []
    assert s.admit(Ticket("a", "agent"), 3).verdict == Verdict.RUN


def test_queued_urgent_work_takes_a_reserved_slot_before_deferrable_work() -> None:
    s = sched(capacity=2, reserved_slots=1, ttft_objective_s={})
    assert s.admit(Ticket("i0", "interactive"), 0).verdict == Verdict.RUN
    assert s.admit(Ticket("b0", "batch"), 0).verdict == Verdict.RUN
    assert s.admit(Ticket("b1", "batch"), 0).verdict == Verdict.QUEUED
    assert s.admit(Ticket("i1", "interactive"), 0).verdict == Verdict.QUEUED
    assert [t.id for t in s.finish("i0", 1.0, 1)] == ["i1"]
    assert [t.id for t in s.finish("b0", 1.0, 2)] == ["b1"]


def test_a_single_slot_is_never_reserved_away_from_batch_work() -> None:
    s = sched(capacity=1, reserved_slots=3)
    assert s.deferrable_limit() == 1
    assert s.admit(Ticket("b", "batch"), 0).verdict == Verdict.RUN


def test_wait_estimate_for_deferrable_work_counts_only_its_slots() -> None:
    s = sched(capacity=4, reserved_slots=2, ttft_objective_s={}, default_service_s=2.0)
    for i in range(2):
        assert s.admit(Ticket(f"b{i}", "batch"), 0).verdict == Verdict.RUN
    assert s.estimated_wait_s(Ticket("b2", "batch"), 0) == 2.0 * 1 / 2


def test_wait_estimate_uses_service_time_measured_at_full_load() -> None:
    s = sched(capacity=4, ttft_objective_s={}, default_service_s=1.0, service_ewma_alpha=1.0)
    # A continuously batching engine: 4 s per request beside three others, 1 s alone.
    for i in range(4):
        assert s.admit(Ticket(f"r{i}", "interactive"), 0).verdict == Verdict.RUN
    for i, seconds in enumerate((4.0, 3.0, 2.0, 1.0)):
        s.finish(f"r{i}", seconds, 1 + i)
    assert s.service_s == 1.0  # the overall average is the last, lone request
    assert (s.service_at(4), s.service_at(2), s.service_at(1)) == (4.0, 2.0, 1.0)
    for i in range(4):
        assert s.admit(Ticket(f"f{i}", "interactive"), 5).verdict == Verdict.RUN
    # Full: the next one waits for a slot of a full deployment, 4 s / 4 slots, not 1 s / 4.
    assert s.estimated_wait_s(Ticket("next", "interactive"), 5) == 1.0
