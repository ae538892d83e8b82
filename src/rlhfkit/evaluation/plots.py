"""PNG plots of runs and evaluations, drawn with matplotlib's Agg canvas (no display,
no global pyplot state). Each function writes ``path`` and returns the PNG bytes."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

Series = Sequence[tuple[float, float]]  # (x, y) points

COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


def _figure(width: float = 7.0, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def line_panels(
    panels: Mapping[str, Mapping[str, Series]], path: Path, xlabel: str = "step", title: str = ""
) -> bytes:
    """One panel per entry of ``panels`` (its y label), one line per run in each."""
    fig = _figure(max(4.5, 3.6 * len(panels)), 3.4)
    axes = fig.subplots(1, max(len(panels), 1), squeeze=False)[0]
    for ax, (ylabel, runs) in zip(axes, panels.items(), strict=False):
        for i, (run, points) in enumerate(runs.items()):
            if points:
                xs, ys = zip(*points, strict=True)
                style = "o-" if len(points) <= 20 else "-"
                ax.plot(xs, ys, style, label=run, color=COLORS[i % len(COLORS)], linewidth=1.5,
                        markersize=4)  # fmt: skip
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def bars(
    values: Mapping[str, float],
    path: Path,
    ylabel: str,
    title: str = "",
    errors: Mapping[str, tuple[float, float]] | None = None,
    baseline: str | None = None,
) -> bytes:
    """A bar per entry (``errors``: (low, high) whiskers); ``baseline``'s value is drawn
    as a dashed line across the chart."""
    fig = _figure(max(4.0, 1.2 + 1.1 * len(values)), 3.4)
    ax = fig.subplots()
    names = list(values)
    ys = [values[n] for n in names]
    colors = [COLORS[i % len(COLORS)] for i in range(len(names))]
    yerr = None
    if errors:
        yerr = [
            [ys[i] - errors[n][0] if n in errors else 0.0 for i, n in enumerate(names)],
            [errors[n][1] - ys[i] if n in errors else 0.0 for i, n in enumerate(names)],
        ]
    ax.bar(names, ys, color=colors, yerr=yerr, capsize=4)
    for i, y in enumerate(ys):
        ax.annotate(f"{y:.3f}", (i, y), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")  # fmt: skip
    if baseline is not None and baseline in values:
        ax.axhline(values[baseline], color="gray", linestyle="--", linewidth=1)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, max(1.0, max(ys) * 1.15) if ys else 1.0)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def gold_vs_proxy(
    runs: Mapping[str, Sequence[tuple[float, float, float]]], path: Path, title: str = ""
) -> bytes:
    """The over-optimisation picture of Gao et al. (2022): the gold score (left axis)
    and the proxy reward the policy is optimised against (right axis) as the policy
    moves away from its start, ``x = sqrt(KL)``. ``runs``: name -> (kl, gold, proxy)."""
    fig = _figure(6.4, 3.8)
    ax = fig.subplots()
    proxy_ax = ax.twinx()
    for i, (name, points) in enumerate(runs.items()):
        if not points:
            continue
        pts = sorted(points)
        xs = [max(kl, 0.0) ** 0.5 for kl, _, _ in pts]
        color = COLORS[i % len(COLORS)]
        ax.plot(xs, [g for _, g, _ in pts], "o-", color=color, label=f"{name}: gold")
        proxy_ax.plot(xs, [p for _, _, p in pts], "s--", color=color, alpha=0.6,
                      label=f"{name}: proxy (reward model)")  # fmt: skip
    ax.set_xlabel("sqrt(KL to the SFT model)  [sqrt(nats)]")
    ax.set_ylabel("gold score (hidden judge)")
    proxy_ax.set_ylabel("proxy reward (whitened)")
    lines = ax.get_legend_handles_labels()
    more = proxy_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path)
