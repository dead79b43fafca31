"""The bench report's chart (rtchub.bench.chart): a real PNG drawn by matplotlib, read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from rtchub.bench.chart import HIGHLIGHT, OTHERS, PANELS, draw, main, values_from_json, values_from_rows
from rtchub.bench.cli import report_markdown
from rtchub.bench.stats import Metric

RESULTS = {
    "relay": {"rtchub": {"delivered msgs/s": 120000.0, "server CPU per msg": 9.5, "errors": 0,
                         "lastError": None},
              "node-ws": {"delivered msgs/s": 90000.0, "server CPU per msg": 11.0}},
    "join-storm": {"rtchub": {"joins/s": 4300.0}, "node-ws": {"joins/s": 4400.0}},
    "cross-node": {"rtchub": {"delivered msgs/s": 50000.0}},
}


def pixels_of(png: Path, colour: str) -> int:
    """How many pixels of the image are (almost exactly) ``colour``."""
    img = imread(png)[..., :3]
    return int((np.abs(img - np.array(to_rgb(colour))).max(axis=-1) < 0.02).sum())


def test_values_from_a_saved_run() -> None:
    values = values_from_json(RESULTS)
    assert values[("relay", "delivered msgs/s")] == {"rtchub": 120000.0, "node-ws": 90000.0}
    assert values[("join-storm", "joins/s")] == {"rtchub": 4300.0, "node-ws": 4400.0}
    assert ("relay", "lastError") not in values                      # not a number


def test_values_from_result_rows() -> None:
    m = Metric("relay", "delivered msgs/s", "", True, {"rtchub": 1.0, "node-ws": None})
    assert values_from_rows([m]) == {("relay", "delivered msgs/s"): {"rtchub": 1.0, "node-ws": None}}


def test_draws_a_png_with_a_panel_per_measured_metric(tmp_path: Path) -> None:
    out = tmp_path / "docs" / "benchmarks.png"
    panels = draw(values_from_json(RESULTS), ["rtchub", "node-ws", "py-websockets"], out, "a run")
    assert [(p.scenario, p.metric) for p in panels] == [
        ("relay", "delivered msgs/s"), ("relay", "server CPU per msg"), ("join-storm", "joins/s")]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"Software" not in out.read_bytes()[:400]                   # stable bytes for stable numbers
    height, width = imread(out).shape[:2]
    assert width > 500 and height > 200
    # rtchub's bars are the highlighted ones, the other servers' grey.
    assert pixels_of(out, HIGHLIGHT) > 1000 and pixels_of(out, OTHERS) > 1000

    without = tmp_path / "no-rtchub.png"
    draw(values_from_json({k: {s: v for s, v in by.items() if s != "rtchub"} for k, by in RESULTS.items()}),
         ["rtchub", "node-ws"], without)
    assert pixels_of(without, HIGHLIGHT) == 0 and pixels_of(without, OTHERS) > 1000


def test_bigger_values_draw_longer_bars(tmp_path: Path) -> None:
    """The bar length follows the number: doubling rtchub's throughput doubles its blue area."""
    def blue(value: float) -> int:
        out = tmp_path / f"{value}.png"
        draw({("relay", "delivered msgs/s"): {"rtchub": value, "node-ws": 100.0}},
             ["rtchub", "node-ws"], out)
        return pixels_of(out, HIGHLIGHT)

    # x axis ends at 1.25 x the largest bar, so compare against a fixed reference bar
    small, big = blue(50.0), blue(100.0)
    assert 1.8 < big / small < 2.2


def test_nothing_to_draw_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        draw({}, ["rtchub"], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_module_main_redraws_from_saved_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    saved = tmp_path / "latest.json"
    saved.write_text(json.dumps({"date": "2026-01-01 00:00 UTC", "machine": {"cpu": "X", "cores": 2},
                                 "results": RESULTS}))
    out = tmp_path / "chart.png"
    assert main([str(saved), str(out)]) == 0
    assert out.exists() and pixels_of(out, HIGHLIGHT) > 0
    assert main([str(saved)]) == 2


def test_report_links_the_chart() -> None:
    meta = {"date": "d", "quick": True, "command": "rtchub bench", "versions": {"rtchub": "0"},
            "machine": {"cpu": "X", "cores": 2, "memory_mb": 1, "kernel": "k", "pinned": True}}
    text = report_markdown(meta, [], [], {}, ["rtchub"], chart="benchmarks.png")
    assert "](benchmarks.png)" in text
    assert "benchmarks.png" not in report_markdown(meta, [], [], {}, ["rtchub"])


def test_panels_name_metrics_the_bench_produces() -> None:
    """Every panel reads a (scenario, metric) that rtchub.bench.scenarios writes."""
    import inspect

    from rtchub.bench import scenarios

    source = inspect.getsource(scenarios)
    for p in PANELS:
        assert f'"{p.metric}"' in source, p
        assert p.scenario.split(" (")[0] in scenarios.SCENARIOS, p
