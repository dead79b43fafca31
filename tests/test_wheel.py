"""The built wheel, as a user gets it: build, install into a fresh venv, serve the demo.

Builds with ``pip wheel --no-deps`` (build isolation: the setuptools that
``[build-system] requires`` names, from the package index), installs into a
new virtual environment with its dependencies (pip's cache makes that quick),
and runs the installed ``rtchub`` from a directory outside the checkout, so
everything served comes from the installed package's data files. Neither the
build nor the install may print a deprecation warning.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from rtchub import __version__
from tests.conftest import ROOT, free_port, wait_port

pytestmark = pytest.mark.e2e


def run(*args: str | Path, cwd: Path) -> str:
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    return text


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def test_wheel_installs_cleanly_and_serves_the_demo(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    # -v: pip shows the build backend's output, where setuptools prints its deprecations.
    build = run(sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", ROOT, "-w", dist, cwd=tmp_path)
    [wheel] = dist.glob("rtchub-*.whl")
    assert "deprecat" not in build.lower(), build

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    install = run(venv / "bin" / "python", "-m", "pip", "install", wheel, cwd=tmp_path)
    assert "deprecat" not in install.lower(), install

    exe = venv / "bin" / "rtchub"
    assert run(exe, "--version", cwd=tmp_path).strip() == f"rtchub {__version__}"
    package = Path(run(venv / "bin" / "python", "-c", "import rtchub; print(rtchub.__file__)",
                       cwd=tmp_path).strip()).parent
    assert package.is_relative_to(venv), package

    port = free_port()
    proc = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--stun-port", "0"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_port(port, timeout=30)
        status, ctype, body = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and ctype.startswith("text/html")
        assert body == (package / "web" / "index.html").read_bytes()
        status, ctype, body = get(f"http://127.0.0.1:{port}/sdk/rtchub.js")
        assert status == 200 and "javascript" in ctype
        assert body == (package / "web" / "sdk" / "rtchub.js").read_bytes()
    finally:
        proc.terminate()
        proc.wait(10)
