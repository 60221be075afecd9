"""generate_test_videos.py with the real ffmpeg: deterministic bytes, the promised format, clear errors."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest

from conftest import run_script

pytestmark = pytest.mark.skipif(shutil.which("ffprobe") is None, reason="ffprobe not installed (apt-get ffmpeg)")


def _digests(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.mp4"))}


def _probe(path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "stream=codec_name,pix_fmt,width,height,r_frame_rate,nb_frames", "-show_entries",
                          "frame=key_frame", "-of", "json", str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_same_seed_same_bytes_and_format(tmp_path):
    args = ["--quick", "--count", "3", "--no-progress", "--fps", "30", "--gop", "10"]
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        r = run_script("generate_test_videos.py", *args, "--seed", seed, "--out", str(tmp_path / name))
        assert r.returncode == 0, r.stderr
    a, b, c = (_digests(tmp_path / n) for n in "abc")
    assert len(a) == 3 and a == b, "same seed, same files, same bytes"
    assert a != c
    names = sorted(a)
    assert [n.rsplit("_", 1)[1] for n in names] == ["none.mp4", "low.mp4", "medium.mp4"]
    info = _probe(tmp_path / "a" / names[0])
    st = info["streams"][0]
    assert (st["codec_name"], st["pix_fmt"], st["width"], st["height"], st["r_frame_rate"]) == \
        ("h264", "yuv420p", 320, 240, "30/1")
    keys = [i for i, f in enumerate(info["frames"]) if f["key_frame"] == 1]
    assert keys[:3] == [0, 10, 20], "a fixed GOP, no scene-cut keyframes"


def test_bad_flags_are_one_line_errors(tmp_path):
    r = run_script("generate_test_videos.py", "--resolution", "1921x1080", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "even" in r.stderr
    r = run_script("generate_test_videos.py", "--count", "0", "--out", str(tmp_path))
    assert r.returncode == 2 and "--count" in r.stderr and "Traceback" not in r.stderr
