"""What a media file holds, measured with ffprobe/ffmpeg: streams, colours over time, tones.

Tests make synthetic inputs with ffmpeg's lavfi sources (solid colours,
sines) and check outputs here. No numpy: audio tones are measured with the
Goertzel algorithm (one DFT bin, Goertzel 1958) on 8 kHz mono PCM that ffmpeg
decodes, and colours by letting ffmpeg average a cropped region to one pixel.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"
FFPROBE = shutil.which("ffprobe") or "/usr/bin/ffprobe"

COLOURS = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}


def make_input(path: Path, colour: str, tone: float, duration: float, size: str = "160x120",
               fps: int = 15) -> Path:
    """A VP8 + Opus WebM of one solid colour and one sine tone (like a janus-pp-rec mux)."""
    subprocess.run([FFMPEG, "-v", "error", "-y", "-f", "lavfi",
                    "-i", f"color=c={colour}:size={size}:rate={fps}:duration={duration}",
                    "-f", "lavfi", "-i", f"sine=frequency={tone}:duration={duration}:sample_rate=48000",
                    "-c:v", "libvpx", "-b:v", "200k", "-c:a", "libopus", "-shortest", str(path)],
                   check=True, timeout=60)
    return path


def probe(path: Path | str) -> dict[str, Any]:
    out = subprocess.run([FFPROBE, "-v", "error", "-show_format", "-show_streams", "-of", "json",
                          str(path)], check=True, capture_output=True, timeout=60).stdout
    return json.loads(out)


def duration(path: Path | str) -> float:
    return float(probe(path)["format"]["duration"])


def region_colours(path: Path | str, x: int, y: int, w: int, h: int, fps: int) -> list[tuple[int, int, int]]:
    """The average RGB of a region in every frame (resampled to ``fps``)."""
    raw = subprocess.run([FFMPEG, "-v", "error", "-i", str(path), "-an",
                          "-vf", f"fps={fps},crop={w}:{h}:{x}:{y},scale=1:1:flags=area",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         check=True, capture_output=True, timeout=120).stdout
    return [(raw[i], raw[i + 1], raw[i + 2]) for i in range(0, len(raw) - 2, 3)]


def nearest_colour(rgb: tuple[int, int, int]) -> str:
    named = dict(COLOURS, black=(0, 0, 0))
    return min(named, key=lambda n: sum((a - b) ** 2 for a, b in zip(named[n], rgb, strict=True)))


def pcm(path: Path | str, rate: int = 8000, start: float = 0.0, length: float | None = None) -> list[int]:
    args = [FFMPEG, "-v", "error", "-ss", f"{start}", "-i", str(path)]
    if length is not None:
        args += ["-t", f"{length}"]
    raw = subprocess.run([*args, "-vn", "-ac", "1", "-ar", str(rate), "-f", "s16le", "-"],
                         check=True, capture_output=True, timeout=120).stdout
    return [int.from_bytes(raw[i:i + 2], "little", signed=True) for i in range(0, len(raw) - 1, 2)]


def tone_power(samples: list[int], freq: float, rate: int = 8000) -> float:
    """Goertzel: power of ``freq`` in ``samples``, normalised by their number."""
    if not samples:
        return 0.0
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return (s1 * s1 + s2 * s2 - coeff * s1 * s2) / len(samples) ** 2


def tones_present(samples: list[int], tones: list[float], rate: int = 8000,
                  off: tuple[float, ...] = (300.0, 550.0, 770.0, 1000.0, 1210.0)) -> dict[float, float]:
    """Each tone's power over the strongest of some off-tone frequencies (a ratio; >> 1 = present)."""
    floor = max(tone_power(samples, f, rate) for f in off) or 1e-9
    return {t: tone_power(samples, t, rate) / floor for t in tones}
