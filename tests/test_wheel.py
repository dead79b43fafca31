"""The built wheel, as a user gets it: build, install into a fresh venv, serve the demo.

Builds with ``pip wheel --no-deps --no-build-isolation`` (the test extra
holds the setuptools that ``[build-system] requires``), installs into a new
virtual environment with its dependencies from ``.venv/wheelhouse`` (``make
wheelhouse``, which ``make test`` runs first: inside tools/netns-run there is
no package index), and runs the installed ``rtchub`` from a directory outside
the checkout, so everything served comes from the installed package's data
files. Neither the build nor the install may print a deprecation warning.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from rtchub import __version__
from tests.conftest import ROOT, free_port, wait_port

pytestmark = pytest.mark.e2e

WHEELHOUSE = ROOT / ".venv" / "wheelhouse"


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """rtchub's dependencies as wheels; made here when the package index is reachable."""
    if not (WHEELHOUSE / ".ready").exists():
        if os.environ.get("RTCHUB_NETNS"):
            pytest.fail("no .venv/wheelhouse and no network in here: run `make wheelhouse` first "
                        "(make test does)")
        subprocess.run(["make", "-C", str(ROOT), "wheelhouse"], check=True, capture_output=True,
                       timeout=900)
    return WHEELHOUSE


def run(*args: str | Path, cwd: Path) -> str:
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    return text


def get(url: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def test_wheel_installs_cleanly_and_serves_the_demo(tmp_path: Path, wheelhouse: Path) -> None:
    dist = tmp_path / "dist"
    # From a clean copy: without isolation setuptools builds in the source tree,
    # and a build/ left there could carry files that no longer exist.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "dist", "*.egg-info", "artifacts", "node_modules", "__pycache__",
        ".pytest_cache", ".ruff_cache", ".hypothesis"))
    # -v: pip shows the build backend's output, where setuptools prints its deprecations.
    build = run(sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                src, "-w", dist, cwd=tmp_path)
    [wheel] = dist.glob("rtchub-*.whl")
    assert "deprecat" not in build.lower(), build

    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    install = run(venv / "bin" / "python", "-m", "pip", "install", "--no-index",
                  "--find-links", wheelhouse, wheel, cwd=tmp_path)
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
