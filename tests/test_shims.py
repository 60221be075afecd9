"""The scripts at the original toolkit's paths are thin shims: they work with the project's Python, and under a
Python without the package they say what to do in one line instead of a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
SHIMS = sorted(p.relative_to(TOOLS).as_posix() for p in TOOLS.rglob("*.py")
               if "tracekit" not in p.parts and p.name not in ("ffmpeg_app.py", "update_readme.py"))


def test_every_shim_is_listed():
    assert "scheduler/worker.py" in SHIMS and "adapters/ffmpeg_wrapper.py" in SHIMS and len(SHIMS) >= 12


@pytest.mark.parametrize("shim", SHIMS)
def test_shim_without_the_package_says_make_setup(shim):
    # -I -S: no PYTHONPATH, no site-packages, so neither tracekit's dependencies nor an installed tracekit exist
    out = subprocess.run([sys.executable, "-I", "-S", str(TOOLS / shim), "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "make setup" in lines[0] and lines[0].startswith(Path(shim).name + ": error:")


@pytest.mark.parametrize("shim", SHIMS)
def test_shim_help_with_the_package(shim):
    out = subprocess.run([sys.executable, str(TOOLS / shim), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower()
