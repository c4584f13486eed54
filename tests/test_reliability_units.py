"""Reliability decisions with hand-built inputs and a controllable clock."""

from __future__ import annotations

import random

import pytest

from modelyard.config import BreakerPolicy, RetryPolicy, ValidatorConfig
from modelyard.errors import InvalidRequest, Overloaded, UpstreamError, UpstreamTimeout
from modelyard.reliability.breaker import BreakerState, CircuitBreaker
from modelyard.reliability.retry import backoff_s, counts_against_deployment, is_retryable
from modelyard.reliability.validators import first_violation, mean_logprob, response_format_validators
from modelyard.routing.balancer import DeploymentView, choose


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(**policy: float) -> tuple[CircuitBreaker, Clock]:
    clock = Clock()
    return CircuitBreaker(BreakerPolicy(**policy), clock), clock  # type: ignore[arg-type]


def test_opens_after_consecutive_failures_and_recovers_through_half_open() -> None:
    b, clock = breaker(consecutive_failures=3, cooldown_s=10, half_open_probes=1, min_requests=100)
    for _ in range(2):
        b.record_failure()
    assert b.current() == BreakerState.CLOSED and b.allow()
    b.record_failure()
    assert b.current() == BreakerState.OPEN and not b.allow()
    clock.now += 9.9
    assert not b.allow()
    clock.now += 0.2
    assert b.current() == BreakerState.HALF_OPEN
    assert b.allow()  # the one probe
    assert not b.allow()  # no second probe while the first is out
    b.record_success()
    assert b.current() == BreakerState.CLOSED and b.allow()
    assert [t.state for t in b.transitions] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_reopens() -> None:
    b, clock = breaker(consecutive_failures=1, cooldown_s=5)
    b.record_failure()
    clock.now += 5
    assert b.allow()
    b.record_failure()
    assert b.current() == BreakerState.OPEN
    clock.now += 4
    assert not b.allow()


def test_success_resets_consecutive_count() -> None:
    b, _ = breaker(consecutive_failures=3, min_requests=100)
    for _ in range(10):
        b.record_failure()
        b.record_failure()
        b.record_success()
    assert b.current() == BreakerState.CLOSED


def test_failure_rate_over_window() -> None:
    b, clock = breaker(consecutive_failures=100, failure_rate=0.5, window_s=10, min_requests=6)
    for ok in (True, False, True, False, True):
        b.record_success() if ok else b.record_failure()
    assert b.current() == BreakerState.CLOSED  # 5 < min_requests
    b.record_failure()  # 3 of 6 failed
    assert b.current() == BreakerState.OPEN


def test_old_outcomes_leave_the_window() -> None:
    b, clock = breaker(consecutive_failures=100, failure_rate=0.5, window_s=10, min_requests=4)
    b.record_failure()
    b.record_failure()
    clock.now += 11
    b.record_success()
    b.record_success()
    b.record_failure()
    assert b.current() == BreakerState.CLOSED  # only 1 of 3 recent outcomes failed


def test_released_probe_frees_the_slot() -> None:
    b, clock = breaker(consecutive_failures=1, cooldown_s=1)
    b.record_failure()
    clock.now += 1
    assert b.allow() and not b.allow()
    b.release_probe()
    assert b.allow()


def test_retry_classification() -> None:
    assert is_retryable(UpstreamError("x")) and is_retryable(UpstreamTimeout("x")) and is_retryable(Overloaded("x"))
    assert not is_retryable(InvalidRequest("x"))
    assert counts_against_deployment(UpstreamError("x")) and not counts_against_deployment(Overloaded("x"))


def test_backoff_is_bounded_jittered_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_attempts=5, backoff_base_s=0.1, backoff_max_s=0.5)
    rng = random.Random(1)
    delays = [backoff_s(policy, n, UpstreamError("x"), rng) for n in range(1, 8) for _ in range(50)]
    assert all(0 <= d <= 0.5 for d in delays) and len(set(delays)) > 10
    assert all(backoff_s(policy, 1, UpstreamError("x"), rng) <= 0.1 for _ in range(50))
    assert backoff_s(policy, 1, Overloaded("busy", retry_after=3), rng) == 3


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("least_outstanding", "b"), ("lowest_latency", "c"), ("lowest_cost", "a")],
)
def test_balancer_strategies(strategy: str, expected: str) -> None:
    views = [
        DeploymentView("a", outstanding=5, ewma_ttft_s=0.3, unit_price=0.1),
        DeploymentView("b", outstanding=1, ewma_ttft_s=0.2, unit_price=0.5),
        DeploymentView("c", outstanding=3, ewma_ttft_s=0.1, unit_price=0.9),
    ]
    assert choose(strategy, views, random.Random(0)) == expected


def test_lowest_latency_tries_unmeasured_first_and_weighted_follows_weights() -> None:
    views = [DeploymentView("a", ewma_ttft_s=0.01), DeploymentView("new")]
    assert choose("lowest_latency", views, random.Random(0)) == "new"
    rng = random.Random(7)
    picks = [choose("weighted", [DeploymentView("a", weight=3), DeploymentView("b", weight=1), DeploymentView("z", weight=0)], rng) for _ in range(4000)]
    assert picks.count("z") == 0
    assert 2.6 < picks.count("a") / picks.count("b") < 3.4


def test_validators() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    checks = response_format_validators({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    assert first_violation('{"n": 3}', checks) is None
    assert "not valid JSON" in (first_violation("{n: 3", checks) or "")
    assert "at n" in (first_violation('{"n": "three"}', checks) or "")
    assert "is a required property" in (first_violation("{}", checks) or "")
    assert first_violation("[1]", response_format_validators({"type": "json_object"})) is not None
    assert response_format_validators({"type": "text"}) == ()
    assert first_violation("abc", [ValidatorConfig(kind="regex", pattern=r"^\d+$")]) is not None
    assert first_violation("123", [ValidatorConfig(kind="regex", pattern=r"^\d+$")]) is None
    assert "at most 3" in (first_violation("abcd", [ValidatorConfig(kind="max_length", max_chars=3)]) or "")
    assert mean_logprob([-1.0, -3.0]) == -2.0 and mean_logprob([]) is None


async def test_limits_and_deadlines_read_the_injected_clock() -> None:
    from modelyard.config import parse_config
    from modelyard.pipeline.limits import LocalLimiter
    from modelyard.pipeline.stages import classify
    from modelyard.pipeline.types import Request, Response

    now = [1000.0]
    limiter = LocalLimiter(clock=lambda: now[0])
    scopes = [("key:a", 2, None)]  # two requests a minute
    assert (await limiter.check(scopes, 1))[0] is not None and (await limiter.check(scopes, 1))[0] is not None
    assert (await limiter.check(scopes, 1))[0] is None  # the window is full ...
    now[0] += 61.0
    assert (await limiter.check(scopes, 1))[0] is not None  # ... and a simulated minute later it is not: no sleeping, no real clock

    seen: list[float] = []

    async def record(request: Request) -> Response:
        seen.append(request.deadline)
        raise StopAsyncIteration

    config = parse_config({"models": {"m": {"kind": "chat", "deployments": [{"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}]}}})
    handler = classify(config, clock=lambda: now[0])(record)
    with pytest.raises(StopAsyncIteration):
        await handler(Request(operation="chat", model="m", request_id="r", headers={"x-modelyard-timeout": "30"}))
    assert seen == [now[0] + 30.0]
