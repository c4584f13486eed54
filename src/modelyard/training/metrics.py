"""Router metrics (pure): quality/cost of a routing, AIQ (RouterBench), APGR and CPT (RouteLLM)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float64]


def outcome(quality: Matrix, cost: Matrix, choice: npt.NDArray[np.int64]) -> tuple[float, float]:
    """(mean quality, mean cost per prompt) of sending prompt i to model choice[i]."""
    rows = np.arange(len(choice))
    return float(quality[rows, choice].mean()), float(cost[rows, choice].mean())


def oracle_choice(quality: Matrix, cost: Matrix) -> npt.NDArray[np.int64]:
    """Per prompt, the cheapest model with the best outcome on it."""
    best = quality.max(axis=1, keepdims=True)
    return np.argmin(np.where(quality >= best - 1e-12, cost, np.inf), axis=1)


def aiq(points: list[tuple[float, float]], min_cost: float, max_cost: float) -> float:
    """RouterBench's AIQ: the area under the non-decreasing convex hull of (cost, quality)
    points, extended flat to ``max_cost``, over the compared cost range, divided by its width.
    Below the cheapest point nothing is achieved (quality 0)."""
    width = max_cost - min_cost
    if width <= 0 or not points:
        return max((q for _, q in points), default=0.0)
    pts = sorted(set(points))
    hull: list[tuple[float, float]] = []
    for p in pts:  # the upper hull, left to right
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    mono: list[tuple[float, float]] = []  # non-decreasing: a point below its predecessor adds nothing
    for c, q in hull:
        if not mono or q >= mono[-1][1]:
            mono.append((c, q))
    if mono[-1][0] < max_cost:
        mono.append((max_cost, mono[-1][1]))
    area = 0.0
    for (c0, q0), (c1, q1) in zip(mono, mono[1:], strict=False):
        lo, hi = max(c0, min_cost), min(c1, max_cost)
        if hi > lo:  # the trapezoid clipped to the compared range
            slope = (q1 - q0) / (c1 - c0) if c1 > c0 else 0.0
            area += (hi - lo) * ((q0 + slope * (lo - c0)) + (q0 + slope * (hi - c0))) / 2
    return area / width


def _cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def pgr_curve(strong_wins: Matrix, weak_q: Matrix, strong_q: Matrix) -> list[tuple[float, float]]:
    """(strong-call fraction, PGR) as the threshold on ``strong_wins`` (a score: higher = more
    reason to call the strong model) sweeps from calling nobody to calling everybody."""
    n = len(strong_wins)
    order = np.argsort(-strong_wins, kind="stable")
    acc_weak, acc_strong = float(weak_q.mean()), float(strong_q.mean())
    gap = acc_strong - acc_weak
    points = [(0.0, 0.0)]
    gain = 0.0
    for calls, i in enumerate(order, 1):
        gain += float(strong_q[i] - weak_q[i])
        acc = acc_weak + gain / n
        points.append((calls / n, (acc - acc_weak) / gap if gap else 0.0))
    return points


def apgr(points: list[tuple[float, float]]) -> float:
    """Area under PGR against the strong-call fraction (trapezoids over [0, 1])."""
    return float(sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False)))


def cpt(points: list[tuple[float, float]], target: float) -> float | None:
    """The smallest strong-call fraction at which PGR reaches ``target`` (e.g. 0.5 for CPT(50%))."""
    for fraction, pgr in points:
        if pgr >= target - 1e-12:
            return fraction
    return None
