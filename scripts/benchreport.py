"""The report of ``scripts/bench.py``: medians, ratios to baselines, the table, the chart."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import Sample

Key = tuple[str, str, str]   # (operation, system, state)


@dataclass(frozen=True)
class OpInfo:
    """How an operation is reported."""

    what: str
    mb: bool       # MB/s means something (bytes moved)
    files: bool    # files/s means something (a tree)


@dataclass
class Row:
    op: str
    system: str
    state: str
    samples: list[Sample]
    seconds: float | None = None
    mbps: float | None = None
    files_ps: float | None = None
    rss_mib: float | None = None
    #: bytes fetched from the store per byte the operation read (median)
    fetched_ratio: float | None = None
    ratios: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.samples if s.error]


def summarize(results: dict[Key, list[Sample]], ops: dict[str, OpInfo],
              baselines: dict[tuple[str, str], tuple[tuple[str, str], ...]],
              states: Sequence[str], systems: Sequence[str]) -> list[Row]:
    """Medians per (operation, system, state), and each row's ratios to its baselines."""
    rows = []
    for (op, system, state), samples in results.items():
        row = Row(op, system, state, samples)
        good = [s for s in samples if s.ok]
        if good:
            row.seconds = statistics.median(s.seconds for s in good)
            if ops[op].mb and good[0].nbytes:
                row.mbps = statistics.median(s.nbytes / s.seconds / 1e6 for s in good)
            if ops[op].files and good[0].files:
                row.files_ps = statistics.median(s.files / s.seconds for s in good)
            rss = [s.rss_kib for s in good if s.rss_kib]
            row.rss_mib = max(rss) / 1024 if rss else None
            fetched = [s.fetched / s.nbytes for s in good if s.fetched is not None and s.nbytes]
            row.fetched_ratio = statistics.median(fetched) if fetched else None
        rows.append(row)
    by_key = {(r.op, r.system, r.state): r for r in rows}
    for row in rows:
        for system, state in baselines.get((row.op, row.state), ()):
            base = by_key.get((row.op, system, state))
            if system == row.system or row.seconds is None:
                continue
            if base is None or base.seconds is None:
                continue
            row.ratios.append(f"{row.seconds / base.seconds:.2f}x {system}"
                              + ("" if state == row.state else f" {state}"))
    op_order = list(ops)
    rows.sort(key=lambda r: (op_order.index(r.op), list(states).index(r.state),
                             list(systems).index(r.system)))
    return rows


def fmt(value: float | None, digits: int = 2) -> str:
    """Thousands separated when large; small values (TTFB) to 10 microseconds, never 1e-05."""
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    if value < 0.01:
        return f"{value:.5f}"
    if value < 0.1:
        return f"{value:.3f}"
    return f"{value:.{digits}f}"


def table(rows: list[Row]) -> str:
    """One fixed-width table: a row per (operation, system, state)."""
    head = ("operation", "system", "state", "n", "median s", "MB/s", "files/s", "peak RSS MiB",
            "fetched/read", "time vs baseline (lower = faster)")
    lines = [head]
    for r in rows:
        ok = len(r.samples) - len(r.errors)
        seconds = fmt(r.seconds, 3) if r.seconds is not None else (
            "timeout" if any("timeout" in e for e in r.errors) else "error")
        lines.append((r.op, r.system, r.state, f"{ok}/{len(r.samples)}", seconds, fmt(r.mbps, 1),
                      fmt(r.files_ps, 0), fmt(r.rss_mib, 0),
                      "-" if r.fetched_ratio is None else f"{r.fetched_ratio:.2f}",
                      ", ".join(r.ratios)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    right = {3, 4, 5, 6, 7, 8}
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.rjust(w) if i in right else c.ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def write_png(rows: list[Row], ops: dict[str, OpInfo], path: Path) -> str:
    """Bar chart of median seconds, one panel per operation; matplotlib only if present."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "PNG skipped: matplotlib is not importable (pip install matplotlib to get one)"
    shown = [op for op in ops if any(r.op == op and r.seconds for r in rows)]
    bars = [sum(1 for r in rows if r.op == op and r.seconds) for op in shown]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 1.2 * len(shown) + 0.3 * sum(bars)),
                             squeeze=False, gridspec_kw={"height_ratios": [b + 2 for b in bars]})
    colors = {"cold": "#4c72b0", "warm": "#dd8452", "hot": "#55a868"}
    for ax, op in zip(axes[:, 0], shown, strict=True):
        mine = [r for r in rows if r.op == op and r.seconds]
        ax.barh([f"{r.system} {r.state}" for r in mine], [r.seconds for r in mine],
                color=[colors[r.state] for r in mine])
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_title(f"{op}: {ops[op].what} (median seconds, log scale)", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"PNG written to {path}"
