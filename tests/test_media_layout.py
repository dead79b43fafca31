"""The grid layout (rtchub.media.layout): the graph it writes, and what ffmpeg makes of it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from rtchub.media.layout import Tile, grid_for, intervals, live_graph, output_args, timeline_graph
from tests.media_probe import (
    FFMPEG,
    make_input,
    nearest_colour,
    pcm,
    probe,
    region_colours,
    tones_present,
)


@pytest.mark.parametrize(("n", "cols", "rows"), [(1, 1, 1), (2, 2, 1), (3, 2, 2), (4, 2, 2), (5, 3, 2),
                                                 (6, 3, 2), (7, 3, 3), (9, 3, 3), (10, 4, 3)])
def test_grid_is_the_most_square_that_holds_everyone(n: int, cols: int, rows: int) -> None:
    g = grid_for(n, 1280, 720)
    assert (g.cols, g.rows) == (cols, rows)
    assert g.cols * g.rows >= n
    assert g.cell_w % 2 == 0 and g.cell_h % 2 == 0
    assert g.cell_w * g.cols <= 1280 and g.cell_h * g.rows <= 720


def test_intervals_cut_at_every_join_and_leave() -> None:
    tiles = [Tile("a", "0:v", start=0, end=10), Tile("b", "1:v", start=2, end=6),
             Tile("c", "2:v", start=5, end=10), Tile("audio-only", None, "3:a", start=1, end=3)]
    got = [(p.start, p.end, p.present) for p in intervals(tiles, 10)]
    assert got == [(0, 2, (0,)), (2, 5, (0, 1)), (5, 6, (0, 1, 2)), (6, 10, (0, 2))]


def test_intervals_merge_a_piece_shorter_than_a_frame() -> None:
    tiles = [Tile("a", "0:v", start=0, end=4), Tile("b", "1:v", start=2.0, end=4),
             Tile("c", "2:v", start=2.04, end=4)]
    pieces = intervals(tiles, 4)
    assert [(p.start, p.end) for p in pieces] == [(0, 2.0), (2.0, 4)]
    assert all(p.end - p.start >= 0.1 for p in pieces)


def test_live_graph_scales_every_tile_to_one_format_before_xstack() -> None:
    g = live_graph([Tile(str(i), f"{i}:v", f"{i}:a") for i in range(3)], width=640, height=360, fps=25)
    chains = [f for f in g.filters if "scale=" in f]
    assert len(chains) == 3
    assert all("format=yuv420p" in c and "setsar=1" in c and "fps=25" in c for c in chains)
    stack = next(f for f in g.filters if "xstack" in f)
    assert "xstack=inputs=3:" in stack and "pad=640:360" in stack
    assert any("amix=inputs=3:duration=longest:normalize=0" in f for f in g.filters)
    args = output_args(g)
    assert args[args.index("-map") + 1] == "[vout]" and "[aout]" in args


def test_live_graph_of_one_tile_needs_no_xstack_and_no_amix() -> None:
    g = live_graph([Tile("a", "0:v", "0:a")], width=640, height=360)
    assert not any("xstack" in f or "amix" in f for f in g.filters)
    assert g.video_out == "vout" and g.audio_out == "aout"


def test_timeline_graph_delays_a_late_joiners_audio_and_concatenates_the_grids() -> None:
    tiles = [Tile("a", "0:v", "0:a", 0, 6), Tile("b", "1:v", "1:a", 2.5, 6)]
    g = timeline_graph(tiles, 6, width=320, height=240, fps=15)
    assert any("adelay=delays=2500:all=1" in f for f in g.filters)
    assert any(f.endswith("concat=n=2:v=1:a=0[vout]") for f in g.filters)
    assert any("atrim=duration=6.000" in f for f in g.filters)


def test_ffmpeg_runs_the_timeline_graph_and_the_grid_reflows(tmp_path: Path) -> None:
    """Red 440 Hz and green 660 Hz from 0 s; blue 880 Hz joins at 1 s; red and green leave at 3 s."""
    fps = 15
    ins = [make_input(tmp_path / "red.webm", "red", 440, 3),
           make_input(tmp_path / "green.webm", "green", 660, 3),
           make_input(tmp_path / "blue.webm", "blue", 880, 3)]
    tiles = [Tile("red", "0:v", "0:a", 0.0, 3.0), Tile("green", "1:v", "1:a", 0.0, 3.0),
             Tile("blue", "2:v", "2:a", 1.0, 4.0)]
    g = timeline_graph(tiles, 4.0, width=320, height=240, fps=fps)
    out = tmp_path / "composed.mp4"
    cmd = [FFMPEG, "-v", "error", "-y"]
    for p in ins:
        cmd += ["-i", str(p)]
    subprocess.run([*cmd, *output_args(g), "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                    str(out)], check=True, timeout=120)

    info = probe(out)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert (video["width"], video["height"]) == (320, 240)
    assert abs(float(info["format"]["duration"]) - 4.0) <= 0.2

    def colours(cx: int, cy: int) -> list[str]:
        """The colour around (cx, cy) in every frame."""
        return [nearest_colour(c) for c in region_colours(out, cx - 10, cy - 10, 20, 20, fps)]

    at = lambda t: round(t * fps)  # noqa: E731 - frame index of a time
    # 0-1 s: two people side by side (160x240 cells, the 160x120 picture centred in each).
    left, right = colours(80, 120), colours(240, 120)
    assert (left[at(0.5)], right[at(0.5)]) == ("red", "green")
    # 1-3 s: three people, a 2x2 grid of 160x120 cells with one empty.
    cells = [colours(80, 60), colours(240, 60), colours(80, 180), colours(240, 180)]
    assert [c[at(2)] for c in cells] == ["red", "green", "blue", "black"]
    # 3-4 s: blue alone fills the frame.
    assert {c[at(3.5)] for c in cells} == {"blue"}
    # The late joiner appears at 1 s +- 0.5 s.
    first_blue = next(i for i, c in enumerate(cells[2]) if c == "blue") / fps
    assert abs(first_blue - 1.0) <= 0.5, first_blue

    before = tones_present(pcm(out, start=0.2, length=0.6), [440, 660, 880])
    after = tones_present(pcm(out, start=1.5, length=1.2), [440, 660, 880])
    assert before[440] > 20 and before[660] > 20 and before[880] < 2, before
    assert all(v > 20 for v in after.values()), after
