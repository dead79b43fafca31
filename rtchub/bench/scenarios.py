"""The scenarios of issue 10, each run against rtchub and the two reference relays.

Sizes (full / ``--quick``):

- ``relay``: 400 connections, 200 rooms of two, each keeps ``window``
  350-byte ``candidate`` messages in flight to its peer (closed loop);
- ``relay-rate``: the same rooms at a fixed 5,000 msgs/s, for latency;
- ``join-storm``: 6,000 / 2,000 connections joining rooms of 4, at most 200
  handshakes in flight; time to ``room-info`` counts from the TCP connect;
- ``idle``: 10,000 / 2,000 joined idle connections, server RSS growth per
  connection, compression off and on;
- ``fanout``: one room of 200, ``message`` broadcast by 4 senders;
- ``cross-node``: ``relay`` across two rtchub nodes sharing Redis, alternating
  with a single-node ``relay`` (the row "relay (beside cross-node)");
- ``asgi``: ``relay`` on the native server and on rtchub mounted in a
  FastAPI app under uvicorn (:mod:`rtchub.bench.asgi_app`), one after the
  other in the same run: the ratio is what docs/asgi.md quotes;
- ``sfu``: join -> first remote frame, mesh vs SFU, rtchub CPU per SFU join,
  Janus CPU per forwarded stream (rtchub.bench.sfu, inside tools/netns-run);
- ``auto``: longest video gap while a call moves p2p -> SFU -> p2p, and a
  10-person room's subscriber downlink with adaptive layers vs all-high
  (rtchub.bench.auto, Chromium pages inside tools/netns-run).
- ``stages``: ``relay`` against rtchub alone, sampled by py-spy: the CPU
  per message split by stage (:mod:`rtchub.bench.stages`).
- ``abuse``: rtchub alone, with its default limits: an honest client's
  ``ping`` -> ``pong`` time while each flood of issue 13 runs
  (:mod:`rtchub.bench.abuse`, 4 s / 2 s each), next to the idle figure.

Alternating repeats (``Plan.repeats``, 3 unless ``--repeats`` says otherwise):
the comparisons that one run cannot settle on a shared machine run as
rtchub, Node, rtchub, Node, ... (``relay-rate``, ``join-storm``) and
single node, cross-node, single node, cross-node, ... (``cross-node``). The
table shows every run and their median; the targets are judged on the median
of the ratios of each adjacent pair (rtchub.bench.cli.evaluate), so a slow
spell of the machine that hits one pair moves one ratio, not the verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rtchub.bench import runner
from rtchub.bench.stats import CLIENT_BOUND, Metric, latency_summary, median

log = logging.getLogger("rtchub.bench")

#: Scenarios whose rtchub and Node runs alternate ``Plan.repeats`` times.
ALTERNATING = ("relay-rate", "join-storm")
#: The single-node relay run alternately with the cross-node one (its rows' label).
SINGLE_BESIDE_CROSS = "beside cross-node"

SCENARIOS = ("relay", "relay-rate", "join-storm", "idle", "fanout", "cross-node", "asgi", "sfu",
             "auto", "abuse", "stages")
#: The two servers of the ``asgi`` scenario: the native one, then the ASGI mount.
ASGI_SERVERS = ("rtchub", "rtchub-asgi")


@dataclass
class Plan:
    quick: bool
    servers: tuple[str, ...]
    #: Alternating runs of the comparisons in ALTERNATING and of cross-node.
    repeats: int = 3

    def t(self, full: float, quick: float) -> float:
        return quick if self.quick else full


def relay_config(plan: Plan) -> dict[str, Any]:
    return {"mode": "relay", "connections": 400, "roomSize": 2, "msgSize": 350, "window": 8,
            "warmup": plan.t(3, 0.5), "duration": plan.t(5, 2)}


def scenario_configs(plan: Plan) -> dict[str, list[tuple[str, dict[str, Any], dict[str, Any]]]]:
    """scenario -> [(variant label, client config, server options)]."""
    return {
        "relay": [("", relay_config(plan), {})],
        "relay-rate": [("", {"mode": "relay-rate", "connections": 400, "roomSize": 2, "msgSize": 350,
                             "rate": 5000, "warmup": plan.t(1.5, 0.5), "duration": plan.t(10, 2)}, {})],
        "join-storm": [("", {"mode": "join-storm", "connections": int(plan.t(6000, 2000)),
                             "roomSize": 4, "concurrency": 200}, {})],
        "idle": [("compression off", {"mode": "idle", "connections": int(plan.t(10000, 2000)),
                                      "roomSize": 4, "concurrency": 200}, {}),
                 ("compression on", {"mode": "idle", "connections": int(plan.t(10000, 2000)),
                                     "roomSize": 4, "concurrency": 200, "deflate": True},
                  {"compression": True})],
        "fanout": [("", {"mode": "fanout", "connections": 200, "roomSize": 200, "msgSize": 350,
                         "senders": 4, "window": 8, "warmup": plan.t(1.5, 0.5),
                         "duration": plan.t(5, 2)}, {})],
    }


def _client_note(result: dict[str, Any]) -> str:
    cpu = result.get("clientCpu")
    return "(client-bound)" if cpu is not None and cpu >= CLIENT_BOUND else ""


def metrics_for(scenario: str, variant: str, server: str, run: runner.ClientRun,
                rows: dict[tuple[str, str], Metric]) -> dict[str, Any]:
    """Turn one client run into table rows; return the raw numbers for the JSON file."""
    r = run.result
    lat = latency_summary(r)
    raw: dict[str, Any] = {k: v for k, v in r.items() if k != "histogram"}
    raw.update(lat)

    def put(name: str, unit: str, higher: bool, value: float | None, note: str = "") -> None:
        key = (scenario + (f" ({variant})" if variant else ""), name)
        metric = rows.setdefault(key, Metric(key[0], name, unit, higher))
        metric.add(server, value)
        if note:
            metric.notes[server] = note
        raw[name] = value

    def put_steal() -> None:
        # The host, not the server: how much CPU the hypervisor took during this run.
        put("hypervisor steal (machine)", "% of CPU time", False,
            None if run.steal is None else run.steal * 100)

    if scenario in ("relay", "cross-node", "fanout", "asgi"):
        rate = r.get("msgsPerSec") if scenario != "fanout" else r.get("deliveriesPerSec")
        delivered = r.get("delivered") or 0
        name = "deliveries/s" if scenario == "fanout" else "delivered msgs/s"
        put(name, "", True, rate, _client_note(r))
        cpu_us = (run.server_cpu / delivered * 1e6) if run.server_cpu is not None and delivered else None
        put("server CPU per msg", "µs", False, cpu_us)
        parts = run.server_cpu_parts
        if scenario == "cross-node" and parts and len(parts) == 3 and delivered:
            # Where a cross-node message's CPU goes: the two nodes and Redis.
            put("server CPU per msg: the two nodes", "µs", False, (parts[0] + parts[1]) / delivered * 1e6)
            put("server CPU per msg: Redis", "µs", False, parts[2] / delivered * 1e6)
        put("p50 latency", "ms", False, lat["p50_ms"])
        put("p99 latency", "ms", False, lat["p99_ms"])
        put("client CPU", "% of a core", False, (r.get("clientCpu") or 0) * 100)
    elif scenario == "relay-rate":
        put("delivered msgs/s", "", True, r.get("msgsPerSec"))
        put("p50 latency", "ms", False, lat["p50_ms"])
        put("p99 latency", "ms", False, lat["p99_ms"])
        put("max latency", "ms", False, lat["max_ms"])
        cpu_us = (run.server_cpu / r["delivered"] * 1e6) if run.server_cpu and r.get("delivered") else None
        put("server CPU per msg", "µs", False, cpu_us)
        put_steal()
    elif scenario == "join-storm":
        put("joins/s", "", True, r.get("joinsPerSec"), _client_note(r))
        put("p99 time to room-info", "ms", False, lat["p99_ms"])
        put("client CPU", "% of a core", False, (r.get("clientCpu") or 0) * 100)
        put_steal()
    elif scenario == "idle":
        n = r.get("connections") or 0
        per = None
        if run.rss_after is not None and run.rss_before is not None and n:
            per = (run.rss_after - run.rss_before) / n / 1024
        put("server RSS per connection", "KB", False, per)
        put("connections alive", "", True, r.get("alive"))
    raw["server_cpu_s"] = run.server_cpu
    raw["rss_before"] = run.rss_before
    raw["rss_after"] = run.rss_after
    return raw


def put_rtchub(rows: dict[tuple[str, str], Metric], scenario: str, name: str, unit: str,
               value: float | None) -> None:
    """One row of a scenario that measures rtchub alone (lower is better)."""
    metric = rows.setdefault((scenario, name), Metric(scenario, name, unit, False))
    metric.values["rtchub"] = value


def sfu_rows(plan: Plan, rows: dict[tuple[str, str], Metric]) -> dict[str, Any]:
    """The SFU scenario's numbers as rows of the rtchub column (rtchub.bench.sfu)."""
    from rtchub.bench.sfu import run_in_namespace

    r = run_in_namespace(plan.quick)

    def put(name: str, unit: str, value: float | None) -> None:
        put_rtchub(rows, "sfu", name, unit, value)

    put("join → first remote frame p50, mesh (2 parties)", "ms", r["mesh_first_frame_ms"]["p50"])
    put("join → first remote frame p99, mesh (2 parties)", "ms", r["mesh_first_frame_ms"]["p99"])
    put("join → first remote frame p50, SFU", "ms", r["sfu_first_frame_ms"]["p50"])
    put("join → first remote frame p99, SFU", "ms", r["sfu_first_frame_ms"]["p99"])
    put("rtchub CPU per SFU join", "ms", r["rtchub_cpu_ms_per_sfu_join"])
    put(f"Janus CPU per forwarded stream ({r['stream']})", "% of a core", r["janus_cpu_pct_per_stream"])
    return r


def auto_rows(plan: Plan, rows: dict[tuple[str, str], Metric]) -> dict[str, Any]:
    """The ``auto`` scenario's numbers as rows of the rtchub column (rtchub.bench.auto)."""
    from rtchub.bench.auto import run_in_namespace

    r = run_in_namespace(plan.quick)

    def put(name: str, unit: str, value: float | None) -> None:
        put_rtchub(rows, "auto", name, unit, value)

    put("longest video gap, p2p → SFU move", "ms", r["gap_p2p_to_sfu_ms"]["max"])
    put("longest video gap, SFU → p2p move", "ms", r["gap_sfu_to_p2p_ms"]["max"])
    put(f"subscriber downlink, {r['members']}-person room, adaptive layers", "kbit/s",
        r["downlink_adaptive_kbps"])
    put(f"subscriber downlink, {r['members']}-person room, all high", "kbit/s",
        r["downlink_all_high_kbps"])
    return r


def stage_rows(plan: Plan, rows: dict[tuple[str, str], Metric]) -> dict[str, Any]:
    """The relay's CPU per message by stage, as rows of the rtchub column (rtchub.bench.stages)."""
    from rtchub.bench.stages import profile_relay

    profile = profile_relay(relay_config(plan))

    def put(name: str, value: float | None, unit: str = "µs") -> None:
        put_rtchub(rows, "stages", name, unit, value)

    put("server CPU per msg (all stages, /proc)", profile.cpu_us_per_msg)
    split = profile.us_per_msg()
    for stage, us in split.items():
        put(f"by stage: {stage}", us)
    put("py-spy samples behind the split", profile.total_samples, "")
    return {"cpu_us_per_msg": profile.cpu_us_per_msg, "delivered": profile.delivered,
            "samples": dict(profile.samples), "us_per_msg": split}


def broker_available() -> str | None:
    """Why cross-node cannot run, or None when ``--broker redis://`` is implemented."""
    import importlib.util

    if importlib.util.find_spec("rtchub.broker.redis") is None:
        return "rtchub has no Redis broker yet (rtchub/broker/redis.py is missing)"
    return None


def run_all(plan: Plan, scenarios: list[str], say: Callable[[str], None]) -> dict[str, Any]:
    """Run ``scenarios``; return ``{"rows": [Metric], "raw": {...}, "skipped": {...}}``."""
    rows: dict[tuple[str, str], Metric] = {}
    raw: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    configs = scenario_configs(plan)
    for scenario in scenarios:
        if scenario == "sfu":
            say("sfu: aiortc bots and Janus in a private network namespace ...")
            try:
                raw[scenario] = sfu_rows(plan, rows)
            except Exception as exc:  # Janus missing, no namespace: say so, run the rest
                skipped[scenario] = f"failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                say(f"sfu: {skipped[scenario]}")
            continue
        if scenario == "auto":
            say("auto: Chromium pages and Janus in a private network namespace ...")
            try:
                raw[scenario] = auto_rows(plan, rows)
            except Exception as exc:  # Janus/Chromium missing, no namespace: say so, run the rest
                skipped[scenario] = f"failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                say(f"auto: {skipped[scenario]}")
            continue
        if scenario == "stages":
            say("stages: relay on rtchub, sampled by py-spy ...")
            try:
                raw[scenario] = stage_rows(plan, rows)
            except runner.BenchError as exc:
                skipped[scenario] = f"failed: {str(exc).splitlines()[0]}"
                say(f"stages: {skipped[scenario]}")
            continue
        if scenario == "abuse":
            say("abuse: rtchub under each flood, an honest probe alongside ...")
            try:
                raw[scenario] = {"rtchub": run_abuse(plan, rows, say)}
            except runner.BenchError as exc:
                skipped[scenario] = f"failed: {str(exc).splitlines()[0]}"
                say(f"abuse: {skipped[scenario]}")
            continue
        if scenario == "cross-node":
            why = broker_available()
            if why:
                skipped[scenario] = why
                say(f"cross-node: not run: {why}")
                continue
            single = f"relay ({SINGLE_BESIDE_CROSS})"
            for i in range(plan.repeats):
                try:
                    say(f"cross-node {i + 1}/{plan.repeats}: single node ...")
                    with runner.serving("rtchub") as server:
                        run = runner.run_client(server, relay_config(plan))
                    raw.setdefault(single, {}).setdefault("rtchub", []).append(
                        metrics_for("relay", SINGLE_BESIDE_CROSS, "rtchub", run, rows))
                    say(f"cross-node {i + 1}/{plan.repeats}: two nodes and Redis ...")
                    with runner.serving("rtchub-cluster") as server:
                        run = runner.run_client(server, relay_config(plan))
                    raw.setdefault(scenario, {}).setdefault("rtchub", []).append(
                        metrics_for(scenario, "", "rtchub", run, rows))
                except runner.BenchError as exc:
                    skipped[scenario] = f"failed: {str(exc).splitlines()[0]}"
                    say(f"cross-node: {skipped[scenario]}")
                    break
            continue
        if scenario == "asgi":
            for kind in ASGI_SERVERS:
                say(f"asgi: {kind} ...")
                try:
                    with runner.serving(kind) as server:
                        run = runner.run_client(server, relay_config(plan))
                except runner.BenchError as exc:
                    say(f"asgi: {kind} failed: {exc}")
                    raw.setdefault("asgi", {})[kind] = {"error": str(exc)[:2000]}
                    continue
                raw.setdefault("asgi", {})[kind] = metrics_for(scenario, "", kind, run, rows)
            continue
        for variant, cfg, server_opts in configs[scenario]:
            label = scenario + (f" ({variant})" if variant else "")
            for server_kind in run_order(scenario, plan):
                say(f"{label}: {server_kind} ...")
                try:
                    with runner.serving(server_kind, **server_opts) as server:
                        run = runner.run_client(server, cfg)
                except runner.BenchError as exc:
                    say(f"{label}: {server_kind} failed: {exc}")
                    raw.setdefault(label, {}).setdefault(server_kind, []).append(
                        {"error": str(exc)[:2000]})
                    for m in rows.values():  # keeps the alternating runs paired by position
                        if m.scenario == label and server_kind in m.runs:
                            m.add(server_kind, None)
                    continue
                raw.setdefault(label, {}).setdefault(server_kind, []).append(
                    metrics_for(scenario, variant, server_kind, run, rows))
                if run.result.get("errors"):
                    say(f"  {server_kind}: {run.result['errors']} error messages, last "
                        f"{run.result.get('lastError')}")
    return {"rows": list(rows.values()), "raw": collapse_repeats(raw), "skipped": skipped}


def run_order(scenario: str, plan: Plan) -> list[str]:
    """The servers of one scenario in the order they run: rtchub and Node alternate
    ``plan.repeats`` times in the ALTERNATING scenarios, the others run once after."""
    servers = list(plan.servers)
    if scenario not in ALTERNATING or plan.repeats < 2 or not {"rtchub", "node-ws"} <= set(servers):
        return servers
    rest = [s for s in servers if s not in ("rtchub", "node-ws")]
    return ["rtchub", "node-ws"] * plan.repeats + rest


def collapse_repeats(raw: dict[str, Any]) -> dict[str, Any]:
    """The JSON results: one dict per scenario and server, as before; for a server
    that ran several times, the medians of its numbers plus ``runs`` (each run)."""
    out: dict[str, Any] = {}
    for label, by_server in raw.items():
        out[label] = {}
        for server, got in by_server.items():
            if not (isinstance(got, list) and got and all(isinstance(r, dict) for r in got)):
                out[label][server] = got  # sfu, auto, abuse: their own layout
            elif len(got) == 1:
                out[label][server] = got[0]
            else:
                keys = {k for r in got for k, v in r.items() if isinstance(v, int | float)
                        and not isinstance(v, bool)}
                merged: dict[str, Any] = {k: median(r.get(k) for r in got) for k in sorted(keys)}
                merged["runs"] = got
                out[label][server] = merged
    return out


def run_abuse(plan: Plan, rows: dict[tuple[str, str], Metric],
              say: Callable[[str], None]) -> dict[str, Any]:
    """The ``abuse`` scenario: probe latency idle, then during each flood.

    The server runs with its default limits (that is what is measured) and
    STUN on; the floods come from 127.0.0.2, the probe from 127.0.0.1.
    """
    import asyncio
    import multiprocessing
    import sys

    from rtchub.bench import abuse

    seconds = plan.t(4.0, 2.0)
    port, stun_port = runner.free_port(), runner.free_udp_port()
    cmd = [sys.executable, "-m", "rtchub.cli", "serve", "--port", str(port),
           "--stun-port", str(stun_port), "--log-level", "warning"]
    server = runner.spawn("rtchub", cmd, port)
    url = f"ws://127.0.0.1:{port}/ws"
    target = abuse.Target(port, stun_port)
    out: dict[str, Any] = {}

    def put(label: str, numbers: dict[str, Any]) -> None:
        key = f"abuse ({label})"
        for name, field in (("probe p50", "p50_ms"), ("probe p99", "p99_ms"), ("probe max", "max_ms")):
            put_rtchub(rows, key, name, "ms", numbers.get(field))

    async def measure(name: str | None) -> dict[str, Any]:
        if name is None:
            return {"probe": abuse.summary(await abuse.probe(url, seconds))}
        # The flood runs in its own process: sharing the probe's event loop
        # would add the flood's own work to every probe time.
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        flooder = ctx.Process(target=abuse.flood_in_process,
                              args=(name, target.port, target.stun_port, seconds, results))
        flooder.start()
        await asyncio.sleep(0.5)  # let the flood get going first
        rtts = await abuse.probe(url, seconds - 0.5)
        flooded = await asyncio.to_thread(results.get, True, seconds + 60)
        await asyncio.to_thread(flooder.join, 10)
        return {"probe": abuse.summary(rtts), "flood": flooded}

    try:
        rss0 = server.rss()
        for name in (None, *abuse.FLOODS):
            label = name or "idle"
            say(f"abuse: {label} ...")
            result = asyncio.run(measure(name))
            if not server.alive():
                raise runner.BenchError(f"rtchub died during {label}\n{server.log_tail()}")
            result["rss_mb"] = server.rss() / 1e6
            out[label] = result
            put(label, result["probe"])
            say(f"  probe p50 {result['probe']['p50_ms']} ms, p99 {result['probe']['p99_ms']} ms, "
                f"max {result['probe']['max_ms']} ms; {result.get('flood', {})}")
        out["rss_start_mb"] = rss0 / 1e6
    finally:
        server.stop()
    return out
