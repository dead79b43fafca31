"""The same-run comparison of ``make bench`` as a chart (PNG, matplotlib).

One panel per headline metric, one horizontal bar per server measured in
that run, so the ratios of the results table can be seen at a glance. The
panels say whether higher or lower is better; rtchub's bar is the
highlighted one. Drawn with matplotlib's Agg backend (no display needed)
and written next to the Markdown report (``docs/benchmarks.png`` for
``docs/benchmarks.md``).

``python -m rtchub.bench.chart bench/results/latest.json docs/benchmarks.png``
redraws it from a saved run without measuring again.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rtchub.bench.stats import SERVERS, Metric

#: Values per (scenario, metric name): server -> value (None when not measured).
Values = Mapping[tuple[str, str], Mapping[str, float | None]]


@dataclass(frozen=True)
class Panel:
    scenario: str
    metric: str
    title: str
    unit: str
    higher_better: bool


#: The comparisons shown, in the order of the results table.
PANELS = (
    Panel("relay", "delivered msgs/s", "relay throughput", "msgs/s", True),
    Panel("relay", "server CPU per msg", "relay: server CPU per message", "µs", False),
    Panel("relay-rate", "p99 latency", "p99 latency at 5,000 msgs/s", "ms", False),
    Panel("join-storm", "joins/s", "join storm", "joins/s", True),
    Panel("idle (compression off)", "server RSS per connection", "idle memory per connection",
          "KB", False),
    Panel("fanout", "deliveries/s", "fan-out to a room of 200", "deliveries/s", True),
    Panel("asgi", "delivered msgs/s", "relay: native vs mounted in FastAPI", "msgs/s", True),
)
#: Server labels (plain text: no Markdown backticks in a picture).
LABELS = {"rtchub": "rtchub", "node-ws": "Node ws relay", "py-websockets": "Python websockets relay",
          "py-picows": "bare picows relay", "rtchub-asgi": "rtchub in FastAPI"}
HIGHLIGHT = "#4f5bd5"
#: Other rtchub variants measured in the same run (another stack, an ASGI mount...).
HIGHLIGHT_SOFT = "#9ba3ea"
OTHERS = "#9aa1ad"


def colour(server: str) -> str:
    if server == "rtchub":
        return HIGHLIGHT
    return HIGHLIGHT_SOFT if server.startswith("rtchub") else OTHERS


def values_from_rows(rows: Iterable[Metric]) -> dict[tuple[str, str], dict[str, float | None]]:
    """The values of a run's result rows (what ``rtchub bench`` measured just now)."""
    return {(m.scenario, m.name): dict(m.values) for m in rows}


def values_from_json(results: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, float | None]]:
    """The values of a saved run: the ``results`` of ``--json`` (scenario -> server -> raw)."""
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for scenario, by_server in results.items():
        for server, raw in by_server.items():
            for name, value in raw.items():
                if isinstance(value, int | float) and not isinstance(value, bool):
                    out.setdefault((scenario, name), {})[server] = float(value)
    return out


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def draw(values: Values, servers: Sequence[str], path: str | Path, caption: str = "") -> list[Panel]:
    """Write the chart to ``path`` (PNG); return the panels drawn (those with data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    panels = [p for p in PANELS
              if sum(values.get((p.scenario, p.metric), {}).get(s) is not None for s in servers) >= 1]
    if not panels:
        raise ValueError("no benchmark results to draw")
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 0.55 * len(servers) * rows + 1.3 * rows),
                             squeeze=False, layout="constrained")
    for ax, panel in zip(axes.flat, panels, strict=False):
        row = values.get((panel.scenario, panel.metric), {})
        shown = [s for s in servers if row.get(s) is not None]
        nums = [float(row[s]) for s in shown]  # type: ignore[arg-type]
        bars = ax.barh(range(len(shown)), nums,
                       color=[colour(s) for s in shown], height=0.6)
        ax.set_yticks(range(len(shown)), [LABELS.get(s, s) for s in shown])
        ax.invert_yaxis()
        ax.bar_label(bars, labels=[_fmt(v) for v in nums], padding=3, fontsize=8)
        ax.set_xlim(0, max(nums) * 1.25 if nums and max(nums) > 0 else 1)
        better = "higher is better" if panel.higher_better else "lower is better"
        ax.set_title(f"{panel.title}\n{panel.unit}, {better}", fontsize=9, loc="left")
        ax.tick_params(labelsize=8)
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}" if max(nums, default=0) >= 100
                                                        else "{x:g}"))
        ax.spines[["top", "right"]].set_visible(False)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if caption:
        fig.suptitle(caption, fontsize=9, x=0.01, ha="left")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    # No "Software" key: the file then changes only when the numbers do.
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return panels


def caption_for(meta: Mapping[str, Any]) -> str:
    mach = meta.get("machine") or {}
    where = f", {mach.get('cpu', '?')} ({mach.get('cores', '?')} cores)" if mach else ""
    return f"rtchub bench, one run: {meta.get('date', '')}{where}; same load client for every server"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m rtchub.bench.chart RESULTS.json OUT.png", file=sys.stderr)
        return 2
    saved = json.loads(Path(args[0]).read_text())
    results = saved["results"]
    servers = [s for s in SERVERS if any(s in by for by in results.values())]
    servers += sorted({s for by in results.values() for s in by} - set(servers))
    draw(values_from_json(results), servers, args[1], caption_for(saved))
    print(f"wrote {args[1]}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
