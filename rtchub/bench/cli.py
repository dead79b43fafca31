"""``rtchub bench``: measure rtchub next to tutorial-style reference relays (issue 10).

``rtchub bench --all --write docs/benchmarks.md --json bench/results/latest.json``
is what ``make bench`` runs; ``--quick`` makes every scenario short enough for
a smoke check. The numbers are ratios within one run on one machine - that is
what the targets are about, never absolute timings in tests.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from rtchub.bench.scenarios import SINGLE_BESIDE_CROSS
from rtchub.bench.stats import (
    OPTIONAL_SERVERS,
    SERVERS,
    Metric,
    Target,
    markdown_table,
    median,
    pair_ratios,
    targets_table,
    text_table,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rtchub.bench.scenarios import SCENARIOS

    p.add_argument("--all", action="store_true", help="run every scenario (the default)")
    p.add_argument("--quick", action="store_true", help="short runs, 2,000 connections for the big ones")
    p.add_argument("--scenario", action="append", choices=SCENARIOS, default=None,
                   help="run only this scenario (repeatable)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help=f"comma-separated; default {','.join(SERVERS)}, also "
                        f"{','.join(OPTIONAL_SERVERS)}")
    p.add_argument("--repeats", type=int, default=3, metavar="N",
                   help="alternating runs of relay-rate and join-storm (rtchub, Node, ...) and of "
                        "cross-node (single node, cross-node, ...), judged on the median (default 3)")
    p.add_argument("--write", metavar="FILE", help="write the Markdown report here")
    p.add_argument("--json", metavar="FILE", help="write the raw results here")


def find(rows: list[Metric], scenario: str, name: str, server: str = "rtchub") -> float | None:
    for m in rows:
        if m.scenario == scenario and m.name == name:
            return m.values.get(server)
    return None


def runs_of(rows: list[Metric], scenario: str, name: str, server: str = "rtchub"
            ) -> list[float | None]:
    """Every run of one server for one row, in the order measured (one value if it ran once)."""
    for m in rows:
        if m.scenario == scenario and m.name == name:
            if m.runs.get(server):
                return list(m.runs[server])
            return [m.values[server]] if server in m.values else []
    return []


def paired(rows: list[Metric], a: tuple[str, str, str], b: tuple[str, str, str]
           ) -> tuple[float | None, list[float | None]]:
    """The median of the ratios a/b of runs made one after the other, and those ratios.

    ``a`` and ``b`` are (scenario, metric, server). Pairing by position
    compares runs that shared the machine's state of the moment; the median
    of three leaves out the one a busy spell of the machine disturbed.
    """
    ratios = pair_ratios(runs_of(rows, *a), runs_of(rows, *b))
    return median(ratios), ratios


def shown_pairs(q: float | None, ratios: list[float | None]) -> str:
    if q is None:
        return ""
    if len(ratios) < 2:
        return f"{q:.2f}×"
    each = ", ".join("—" if r is None else f"{r:.2f}" for r in ratios)
    return f"{q:.2f}× (median of {len(ratios)} alternating pairs: {each})"


def evaluate(rows: list[Metric], quick: bool, skipped: dict[str, str]) -> list[Target]:
    """The targets of issues 10 and 14, judged on this run's numbers.

    Where runs alternate (``--repeats``), a target is judged on the median of
    the per-pair ratios (rtchub.bench.scenarios): for relay-rate p99 and
    join-storm the pairs are rtchub then Node, for cross-node the pairs are
    the single node then cross-node.
    """
    out: list[Target] = []

    def add(name: str, wanted: str, value: float | None, ok: bool, shown: str) -> None:
        out.append(Target(name, wanted, shown if value is not None else "not measured",
                          None if value is None else ok))

    def pair(scenario: str, metric: str) -> tuple[float | None, float | None]:
        return find(rows, scenario, metric), find(rows, scenario, metric, "node-ws")

    r, n = pair("relay", "delivered msgs/s")
    q = r / n if r and n else None
    add("relay throughput", "≥ 1.0× Node", q, bool(q and q >= 1.0), f"{q:.2f}×" if q else "")
    r, n = pair("relay", "server CPU per msg")
    add("relay CPU per message", "≤ Node's", r if n else None, bool(r and n and r <= n),
        f"{r:.2f} µs vs {n:.2f} µs" if r and n else "")
    p99 = find(rows, "relay-rate", "p99 latency")
    add("p99 at 5,000 msgs/s", "≤ 1 ms", p99, bool(p99 is not None and p99 <= 1.0),
        f"{p99:.3f} ms" if p99 is not None else "")
    q, each = paired(rows, ("relay-rate", "p99 latency", "rtchub"),
                     ("relay-rate", "p99 latency", "node-ws"))
    add("p99 at 5,000 msgs/s against Node", "≤ 1.0× Node's (median of pairs)", q,
        bool(q is not None and q <= 1.0), shown_pairs(q, each))
    q, each = paired(rows, ("join-storm", "joins/s", "rtchub"), ("join-storm", "joins/s", "node-ws"))
    add("join-storm joins/s" + (" (quick: 2,000 conns)" if quick else " (6,000 conns)"),
        "≥ 1.0× Node (median of pairs)", q, bool(q and q >= 1.0), shown_pairs(q, each))
    kb = find(rows, "idle (compression off)", "server RSS per connection")
    alive = find(rows, "idle (compression off)", "connections alive")
    add("idle memory, compression off" + (" (quick: 2,000 conns)" if quick else " (10,000 conns)"),
        "≤ 12 KB/conn", kb, bool(kb is not None and kb <= 12.0),
        f"{kb:.1f} KB ({alive:.0f} alive)" if kb is not None and alive is not None else "")
    kb_on = find(rows, "idle (compression on)", "server RSS per connection")
    out.append(Target("idle memory, compression on", "report", f"{kb_on:.1f} KB" if kb_on else
                      "not measured", None if kb_on is None else True))
    if "cross-node" in skipped:
        out.append(Target("cross-node over Redis", "≥ 0.5× single node",
                          f"not run: {skipped['cross-node']}", None))
    else:
        # The single node that alternated with cross-node (rtchub.bench.scenarios),
        # or, from an older run without it, the relay scenario's.
        base = f"relay ({SINGLE_BESIDE_CROSS})"
        if find(rows, base, "delivered msgs/s") is None:
            base = "relay"
        q, each = paired(rows, ("cross-node", "delivered msgs/s", "rtchub"),
                         (base, "delivered msgs/s", "rtchub"))
        add("cross-node over Redis", "≥ 0.5× single node (median of pairs)", q,
            bool(q and q >= 0.5), shown_pairs(q, each))
        c = find(rows, "cross-node", "server CPU per msg")
        s = find(rows, base, "server CPU per msg")
        q, each = paired(rows, ("cross-node", "server CPU per msg", "rtchub"),
                         (base, "server CPU per msg", "rtchub"))
        add("cross-node CPU per message (both nodes + Redis)", "≤ 2.5× single node (median of pairs)",
            q, bool(q and q <= 2.5),
            shown_pairs(q, each) + (f"; medians {c:.2f} µs vs {s:.2f} µs" if q and c and s else ""))
    native = find(rows, "asgi", "delivered msgs/s")
    mounted = find(rows, "asgi", "delivered msgs/s", "rtchub-asgi")
    q = mounted / native if mounted and native else None
    out.append(Target("relay through the ASGI mount (FastAPI + uvicorn)", "report (× native)",
                      f"{q:.2f}× native" if q else "not measured", None if q is None else True))
    return out


def report_markdown(meta: dict[str, Any], rows: list[Metric], targets: list[Target],
                    skipped: dict[str, str], servers: list[str], chart: str | None = None) -> str:
    v = meta["versions"]
    mach = meta["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `rtchub bench` (`make bench`); do not edit by hand - rerun it.",
        "",
        f"- Run: {meta['date']}, {'quick' if meta['quick'] else 'full'} mode, command "
        f"`{meta['command']}`",
        f"- Machine: {mach['cpu']}, {mach['cores']} cores, {mach['memory_mb']} MB, Linux {mach['kernel']}; "
        + ("server pinned to core 0, load client to core 1 (taskset)" if mach["pinned"]
           else "NOT pinned (fewer than 2 cores or no taskset)"),
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- Servers: `rtchub serve --max-msg-rate 0 --max-msg-burst 0 --stun-port 0 "
        "--max-connections-per-ip 0 --max-handshakes-per-ip 0 --max-room-members 1000` "
        "(validation and identity on); `bench/node/relay.js` (tutorial-style Node `ws` relay); "
        "`bench/python/relay_websockets.py` (tutorial-style `websockets` relay, stdlib json, "
        "default asyncio loop).",
        "- Load client: `bench/node/loadgen.js` (raw RFC 6455 framing, one write per connection per "
        "loop turn; `ws` for the compression-on idle run). \"(client-bound)\" marks a run where the "
        "client used ≥ 90 % of its core: the server may have had more to give.",
        "",
        "## Results",
        "",
        markdown_table(rows, servers),
        "",
    ]
    if chart:
        lines += [f"![The headline comparisons of this run, one panel per metric ({chart})]({chart})",
                  ""]
    if skipped:
        lines += [f"- {name}: not run: {why}" for name, why in skipped.items()] + [""]
    repeated = sorted({m.scenario for m in rows if any(len(v) > 1 for v in m.runs.values())})
    if repeated:
        lines += ["Rows of " + ", ".join(f"`{r}`" for r in repeated) + " ran alternately (rtchub, "
                  "Node, rtchub, Node, ...; single node, cross-node, ...): a cell shows the median "
                  "and, in brackets, every run in the order measured. Their targets are judged on "
                  "the median of the ratios of each adjacent pair (single node / cross-node "
                  "for cross-node), so a busy spell of the machine moves one ratio, not the "
                  "verdict.", ""]
    lines += ["## Targets (issue 10)", "", targets_table(targets), ""]
    notes = meta.get("notes")
    if notes:
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from rtchub.bench import runner
    from rtchub.bench.scenarios import SCENARIOS, Plan, run_all

    servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    bad = [s for s in servers if s not in SERVERS + OPTIONAL_SERVERS]
    if bad:
        print(f"unknown server(s): {', '.join(bad)}", file=sys.stderr)
        return 2
    scenarios = list(args.scenario or SCENARIOS)
    limit = runner.raise_nofile()

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    say(f"rtchub bench: {', '.join(scenarios)} on {', '.join(servers)} (nofile {limit})")
    outcome = run_all(Plan(quick=args.quick, servers=tuple(servers), repeats=max(1, args.repeats)),
                      scenarios, say)
    if "asgi" in scenarios:
        # The asgi scenario's second server gets a column of its own.
        servers.append("rtchub-asgi")
    rows: list[Metric] = outcome["rows"]
    targets = evaluate(rows, args.quick, outcome["skipped"])
    command = "rtchub bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "rtchub bench"
    meta = {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
            "command": command, "machine": runner.machine(), "versions": runner.versions()}
    print(text_table(rows, servers))
    print()
    for t in targets:
        print(f"{t.verdict:>13}  {t.name}: {t.value} (wanted {t.wanted})")
    if args.write:
        notes_file = Path(args.write).with_suffix(".notes.md")
        if notes_file.exists():
            meta["notes"] = notes_file.read_text()
        Path(args.write).parent.mkdir(parents=True, exist_ok=True)
        # The same-run comparison as a picture, next to the report (rtchub.bench.chart).
        from rtchub.bench.chart import caption_for, draw, values_from_rows

        chart = Path(args.write).with_suffix(".png")
        drawn = None
        try:
            draw(values_from_rows(rows), servers, chart, caption_for(meta))
            drawn = chart.name
        except ValueError as exc:  # nothing measured that the chart shows
            say(f"no chart: {exc}")
        Path(args.write).write_text(
            report_markdown(meta, rows, targets, outcome["skipped"], servers, chart=drawn))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = dict(meta, results=outcome["raw"], skipped=outcome["skipped"],
                       targets=[t.__dict__ | {"verdict": t.verdict} for t in targets])
        Path(args.json).write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return 0


