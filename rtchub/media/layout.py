"""One grid layout, as an ffmpeg filtergraph, for every composed output.

The composed recording of a room (issue 17) and the HLS broadcast (issue 18)
show the same thing: every participant's video in a grid, all their audio
mixed. Both are built here, so they cannot drift apart:

* :func:`live_graph` composes inputs that are all present for the whole run
  (the broadcast's RTP inputs; when the publishers change, the broadcast
  restarts ffmpeg with a new graph);
* :func:`timeline_graph` composes recorded files with time offsets: the run is
  cut into intervals in which the same people are present, each interval gets
  its own grid (so the grid re-flows when someone joins or leaves), and the
  intervals are concatenated.

Facts the graph relies on (ffmpeg docs, "xstack" and "amix"):

* ``xstack`` needs every input in one pixel format and takes at least two
  inputs, so every tile is scaled, padded to the cell, given ``setsar=1``,
  a common frame rate and ``format=yuv420p`` first, and a one-person grid
  skips xstack;
* ``concat`` needs every segment with the same size and SAR, so every grid is
  padded to the output size;
* ``amix`` with ``normalize=0`` keeps each voice at its level (the default
  divides by the number of inputs), ``duration=longest`` keeps the mix going
  while anyone is still talking; ``adelay`` puts a late joiner's audio at its
  join time.

No decoding happens in Python: this module only writes the graph text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

#: Intervals shorter than this are merged into their neighbour (a join and a
#: leave within one frame would give an empty segment, which concat rejects).
MIN_INTERVAL = 0.1


@dataclass(frozen=True)
class Tile:
    """One participant's media in a composition.

    ``video`` / ``audio`` are ffmpeg stream specifiers (``"0:v:0"``) or None.
    ``start`` is when the participant's first frame falls on the composition's
    clock (seconds); ``end`` when it stops (None: with its media, or never
    for a live input).
    """

    label: str
    video: str | None = None
    audio: str | None = None
    start: float = 0.0
    end: float | None = None


@dataclass(frozen=True)
class Grid:
    cols: int
    rows: int
    cell_w: int
    cell_h: int

    def position(self, i: int) -> tuple[int, int]:
        return (i % self.cols) * self.cell_w, (i // self.cols) * self.cell_h


def _even(x: float) -> int:
    return max(2, int(x) // 2 * 2)


def grid_for(n: int, width: int, height: int) -> Grid:
    """The most square grid for ``n`` tiles in ``width`` x ``height`` (cells even-sized)."""
    if n <= 0:
        return Grid(0, 0, width, height)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    return Grid(cols, rows, _even(width / cols), _even(height / rows))


@dataclass
class Graph:
    """A ``-filter_complex`` text and the labels of its video and audio outputs."""

    filters: list[str] = field(default_factory=list)
    video_out: str | None = None
    audio_out: str | None = None

    @property
    def text(self) -> str:
        return ";".join(self.filters)


def _tile_chain(src: str, dst: str, grid: Grid, fps: int) -> str:
    """Scale into the cell keeping the aspect ratio, pad, one SAR/rate/pixel format."""
    w, h = grid.cell_w, grid.cell_h
    return (f"[{src}]scale={w}:{h}:force_original_aspect_ratio=decrease:force_divisible_by=2,"
            f"setsar=1,fps={fps},format=yuv420p,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2[{dst}]")


def _stack(g: Graph, tiles: Sequence[str], out: str, width: int, height: int, fps: int,
           tag: str) -> None:
    """``tiles`` (labels of raw video streams) -> one ``width`` x ``height`` grid at ``out``."""
    n = len(tiles)
    grid = grid_for(n, width, height)
    if n == 0:
        g.filters.append(f"color=c=black:s={width}x{height}:r={fps},format=yuv420p,setsar=1[{out}]")
        return
    cells = [f"{tag}c{i}" for i in range(n)]
    for src, cell in zip(tiles, cells, strict=True):
        g.filters.append(_tile_chain(src, cell, grid, fps))
    pad = f"pad={width}:{height}:(ow-iw)/2:(oh-ih)/2:color=black"
    if n == 1:
        g.filters.append(f"[{cells[0]}]{pad}[{out}]")
        return
    layout = "|".join(f"{x}_{y}" for x, y in (grid.position(i) for i in range(n)))
    g.filters.append("".join(f"[{c}]" for c in cells)
                     + f"xstack=inputs={n}:layout={layout}:fill=black,{pad}[{out}]")


def _mix(g: Graph, sources: Sequence[tuple[str, float]], out: str) -> None:
    """Audio streams with start offsets (seconds) -> one mix at ``out``."""
    labels = []
    for i, (spec, start) in enumerate(sources):
        label = f"a{i}"
        delay = f",adelay=delays={round(start * 1000)}:all=1" if start > 0 else ""
        g.filters.append(f"[{spec}]aresample=48000,aformat=channel_layouts=stereo,"
                         f"asetpts=PTS-STARTPTS{delay}[{label}]")
        labels.append(label)
    if len(labels) == 1:
        g.filters.append(f"[{labels[0]}]anull[{out}]")
    else:
        g.filters.append("".join(f"[{lb}]" for lb in labels)
                         + f"amix=inputs={len(labels)}:duration=longest:normalize=0[{out}]")


def live_graph(tiles: Sequence[Tile], *, width: int = 1280, height: int = 720, fps: int = 25) -> Graph:
    """All ``tiles`` present for the whole run: one grid, one mix (the broadcast)."""
    g = Graph()
    videos = [t.video for t in tiles if t.video]
    _stack(g, videos, "vout", width, height, fps, "")
    g.video_out = "vout"
    audios = [(t.audio, 0.0) for t in tiles if t.audio]
    if audios:
        _mix(g, audios, "aout")
        g.audio_out = "aout"
    return g


@dataclass(frozen=True)
class Interval:
    start: float
    end: float
    present: tuple[int, ...]  # indexes into the tiles with video


def intervals(tiles: Sequence[Tile], total: float) -> list[Interval]:
    """Cut ``[0, total)`` where anyone's video starts or ends; who is present in each piece."""
    cuts = {0.0, total}
    for t in tiles:
        if t.video:
            cuts.add(min(max(t.start, 0.0), total))
            if t.end is not None:
                cuts.add(min(max(t.end, 0.0), total))
    points = sorted(cuts)
    merged = [points[0]]
    for p in points[1:]:
        if p - merged[-1] >= MIN_INTERVAL:
            merged.append(p)
    if len(merged) == 1:
        merged.append(total)
    merged[-1] = total  # a too-short last piece joins the one before
    out = []
    for a, b in zip(merged, merged[1:], strict=False):
        mid = (a + b) / 2
        present = tuple(i for i, t in enumerate(tiles)
                        if t.video and t.start <= mid and (t.end is None or mid < t.end))
        out.append(Interval(a, b, present))
    return out


def timeline_graph(tiles: Sequence[Tile], total: float, *, width: int = 1280, height: int = 720,
                   fps: int = 25) -> Graph:
    """Recorded tiles with offsets -> a grid that re-flows at each join/leave, and the mix.

    Each tile must have ``end`` set (its start plus its media's duration, or
    its leave time): the composition knows its length up front.
    """
    g = Graph()
    pieces = intervals(tiles, total)
    uses: dict[int, list[str]] = {}
    for k, piece in enumerate(pieces):
        for i in piece.present:
            uses.setdefault(i, []).append(f"v{i}s{k}")
    for i, labels in uses.items():
        src = f"[{tiles[i].video}]setpts=PTS-STARTPTS"
        if len(labels) == 1:
            g.filters.append(f"{src}[{labels[0]}]")
        else:
            g.filters.append(f"{src},split={len(labels)}" + "".join(f"[{lb}]" for lb in labels))
    seg_labels = []
    for k, piece in enumerate(pieces):
        dur = piece.end - piece.start
        cut = []
        for i in piece.present:
            t = tiles[i]
            a, b = piece.start - t.start, piece.end - t.start
            # A tile whose media ends a little early holds its last frame to the cut.
            lbl = f"p{i}s{k}"
            g.filters.append(f"[v{i}s{k}]trim=start={max(a, 0):.3f}:end={b:.3f},setpts=PTS-STARTPTS,"
                             f"tpad=stop_mode=clone:stop_duration={dur:.3f}[{lbl}]")
            cut.append(lbl)
        grid_lbl = f"g{k}"
        _stack(g, cut, grid_lbl, width, height, fps, f"s{k}")
        seg = f"seg{k}"
        g.filters.append(f"[{grid_lbl}]trim=duration={dur:.3f},setpts=PTS-STARTPTS[{seg}]")
        seg_labels.append(seg)
    if len(seg_labels) == 1:
        g.filters.append(f"[{seg_labels[0]}]null[vout]")
    else:
        g.filters.append("".join(f"[{s}]" for s in seg_labels)
                         + f"concat=n={len(seg_labels)}:v=1:a=0[vout]")
    g.video_out = "vout"
    audios = [(t.audio, t.start) for t in tiles if t.audio]
    if audios:
        _mix(g, audios, "amix")
        g.filters.append(f"[amix]atrim=duration={total:.3f}[aout]")
        g.audio_out = "aout"
    return g


def output_args(g: Graph) -> list[str]:
    """``-filter_complex`` and ``-map`` arguments for ``g``."""
    args = ["-filter_complex", g.text]
    if g.video_out:
        args += ["-map", f"[{g.video_out}]"]
    if g.audio_out:
        args += ["-map", f"[{g.audio_out}]"]
    return args
