"""The pure part of ``rtchub bench``: percentiles, ratios, targets, the Markdown table.

Nothing here starts a process or opens a socket, so pytest covers it
(tests/test_bench.py) and the harness cannot rot silently. The load client
sends a latency histogram rather than every sample: buckets of 1 µs up to
2 ms, 10 µs up to 20 ms, 100 µs up to 200 ms and 1 ms above (see
bench/node/loadgen.js), which keeps p99 exact to the bucket at any rate.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

SERVERS = ("rtchub", "node-ws", "py-websockets")
#: Measured only when named in ``--servers``: the bare picows relay, the floor
#: of a Python server's cost per message (bench/python/relay_picows.py).
OPTIONAL_SERVERS = ("py-picows",)
SERVER_TITLES = {"rtchub": "rtchub", "node-ws": "Node `ws` relay",
                 "py-websockets": "Python `websockets` relay",
                 "py-picows": "bare picows relay",
                 "rtchub-asgi": "rtchub mounted in FastAPI (uvicorn)"}
#: A load client using this share of its core or more was probably the limit.
CLIENT_BOUND = 0.90


def percentile(histogram: Sequence[Sequence[float]], q: float) -> float | None:
    """The ``q``-th percentile (0-100) of a ``[[value, count], ...]`` histogram.

    Nearest-rank definition: the smallest bucket value whose cumulative count
    reaches ``ceil(q/100 * total)``. ``None`` for an empty histogram.
    """
    pairs = sorted((float(v), int(c)) for v, c in histogram if c > 0)
    total = sum(c for _, c in pairs)
    if total == 0:
        return None
    if q <= 0:
        return pairs[0][0]
    rank = -(-q * total // 100)  # ceil without floats going astray for q=100
    rank = max(1, min(total, int(rank)))
    seen = 0
    for value, count in pairs:
        seen += count
        if seen >= rank:
            return value
    return pairs[-1][0]  # pragma: no cover - unreachable: seen == total at the end


def latency_summary(result: dict[str, Any]) -> dict[str, float | None]:
    """p50 / p90 / p99 / max in milliseconds from a load-client result."""
    hist = result.get("histogram") or []
    out: dict[str, float | None] = {}
    for name, q in (("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99)):
        v = percentile(hist, q)
        out[name] = None if v is None else v / 1000.0
    mx = result.get("latencyMaxUs")
    out["max_ms"] = None if not hist or mx is None else float(mx) / 1000.0
    return out


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def fmt_num(value: float | None, unit: str = "") -> str:
    """Human numbers for the table: 123,456 / 12.3 / 0.456."""
    if value is None:
        return "—"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3f}".rstrip("0").rstrip(".") if value else "0"
    return text + unit


def fmt_ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def median(values: Iterable[float | None]) -> float | None:
    """The median of the measured values (``None`` ones left out), ``None`` if none.

    The alternating repeats of ``rtchub bench`` are judged on this: on a
    shared machine one run in three is often disturbed, and the median
    ignores it whichever way it went.
    """
    got = [v for v in values if v is not None]
    return statistics.median(got) if got else None


def pair_ratios(a: Sequence[float | None], b: Sequence[float | None]) -> list[float | None]:
    """``a[i] / b[i]`` for runs made one after the other (an alternating repeat)."""
    return [ratio(x, y) for x, y in zip(a, b, strict=False)]


@dataclass
class Metric:
    """One row of the results table."""

    scenario: str
    name: str
    unit: str
    #: True when higher is better (throughput), False for costs and latencies.
    higher_better: bool
    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    #: Every run of a server, in the order measured, when it ran more than once
    #: (alternating repeats); ``values`` then holds their median.
    runs: dict[str, list[float | None]] = field(default_factory=dict)

    def add(self, server: str, value: float | None) -> None:
        """One more measurement of ``server``: the value shown is the median of all of them."""
        got = self.runs.setdefault(server, [])
        got.append(value)
        self.values[server] = value if len(got) == 1 else median(got)

    def cell(self, server: str) -> str:
        """The table cell: the value, or ``median (run 1 / run 2 / ...)`` for repeats."""
        text = fmt_num(self.values.get(server))
        got = self.runs.get(server, [])
        if len(got) > 1:
            text += " (" + " / ".join(fmt_num(v) for v in got) + ")"
        note = self.notes.get(server)
        return f"{text} {note}" if note else text

    def vs_node(self) -> float | None:
        return ratio(self.values.get("rtchub"), self.values.get("node-ws"))


@dataclass
class Target:
    """A target from issue 10, judged on the numbers of one run."""

    name: str
    wanted: str
    value: str
    met: bool | None  # None: not measured in this run

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


def judge(wanted: str, value: float | None, ok: bool | None, name: str, shown: str) -> Target:
    return Target(name, wanted, shown, None if value is None else ok)


def markdown_table(metrics: Iterable[Metric], servers: Sequence[str] = SERVERS) -> str:
    head = ["scenario", "metric"] + [SERVER_TITLES.get(s, s) for s in servers] + ["rtchub / Node"]
    lines = ["| " + " | ".join(head) + " |",
             "|" + "|".join(["---", "---"] + ["---:"] * (len(servers) + 1)) + "|"]
    for m in metrics:
        cells = [m.scenario, f"{m.name} ({m.unit})" if m.unit else m.name]
        cells += [m.cell(s) for s in servers]
        cells.append(fmt_ratio(m.vs_node()))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_table(targets: Iterable[Target]) -> str:
    lines = ["| target | wanted | this run | verdict |", "|---|---|---|---|"]
    for t in targets:
        lines.append(f"| {t.name} | {t.wanted} | {t.value} | {t.verdict} |")
    return "\n".join(lines)


def text_table(metrics: Iterable[Metric], servers: Sequence[str] = SERVERS) -> str:
    """The same table for a terminal: fixed-width columns."""
    rows = [["scenario", "metric"] + list(servers) + ["vs node"]]
    for m in metrics:
        row = [m.scenario, f"{m.name} ({m.unit})" if m.unit else m.name]
        row += [m.cell(s) for s in servers]
        row.append(fmt_ratio(m.vs_node()))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
