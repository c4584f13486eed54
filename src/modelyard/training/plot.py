"""The cost/quality picture of a router evaluation: the router's sweep against the baselines (matplotlib, optional)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_reports(panels: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    """One panel per report: the router's sweep (line), every single model, random, and the oracle."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(panels))
    rows = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 4.2 * rows), squeeze=False)
    for ax, (title, report) in zip(axes.flat, panels, strict=False):
        _panel(ax, title, report)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _panel(ax: Any, title: str, report: dict[str, Any]) -> None:
    sweep = sorted((p["cost"], p["quality"]) for p in report["sweep"])
    ax.plot([c for c, _ in sweep], [q for _, q in sweep], ".-", color="tab:blue", lw=1, ms=3, label="router sweep")
    singles = report["baselines"]["single_models"]
    for name, s in singles.items():
        ax.scatter(s["cost"], s["quality"], color="tab:gray", s=18, zorder=3)
        ax.annotate(_short(name), (s["cost"], s["quality"]), fontsize=6, xytext=(3, -6), textcoords="offset points")
    best = report["best_single_quality"]
    ax.axhline(best, color="tab:gray", ls=":", lw=0.8, label=f"best single ({_short(report['best_single_model'])})")
    random = report["baselines"]["random"]
    ax.scatter(random["cost"], random["quality"], marker="x", color="tab:red", zorder=4, label="random")
    ax.scatter(report["oracle_cost"], report["oracle_quality"], marker="*", s=90, color="tab:green", zorder=4, label="oracle")
    ax.scatter(report["router_cost"], report["router_quality"], marker="o", s=50, facecolors="none", edgecolors="tab:blue", zorder=5, label=f"router, target {report['router_target']:g}")
    costs = [s["cost"] for s in singles.values()] + [report["oracle_cost"]]
    if max(costs) / max(min(costs), 1e-12) > 30:
        ax.set_xscale("log")
    ax.set_title(f"{title}\nAIQ router {report['aiq_router']:.3f} vs models {report['aiq_best_single']:.3f}", fontsize=9)
    ax.set_xlabel("cost per prompt (US$)", fontsize=8)
    ax.set_ylabel("quality", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="lower right")


def _short(name: str) -> str:
    return name.split("/")[-1][:22]
