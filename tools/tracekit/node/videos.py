"""Synthesised test inputs: H.264 yuv420p clips of controlled complexity, deterministic for a seed.

Clip ``i`` gets noise level ``NOISE_LEVELS[i % 3]`` (none / low / medium: a third each) and a test
pattern drawn from ``PATTERNS`` by a ``random.Random(seed)``; pattern seeds and the noise seed derive
from the same generator, and the container is written bit-exact, so one seed gives the same bytes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tracekit.core.errors import BadInput, DependencyMissing, StepFailed, UsageError

PATTERNS = ("testsrc2", "mandelbrot", "life", "gradients", "smptehdbars", "cellauto")
NOISE_LEVELS = (("none", 0), ("low", 8), ("medium", 20))
RES_RE = re.compile(r"^([1-9][0-9]{1,4})x([1-9][0-9]{1,4})$")
BITRATE_RE = re.compile(r"^[1-9][0-9]*(\.[0-9]+)?[kKmM]?$")


@dataclass(frozen=True)
class ClipSpec:
    """One clip to synthesise."""

    index: int
    pattern: str
    noise: str
    strength: int
    pattern_seed: int
    noise_seed: int
    path: Path


def parse_resolution(text: str) -> tuple[int, int]:
    """``"1920x1080"`` -> (1920, 1080); even sizes only (yuv420p)."""
    m = RES_RE.match(text or "")
    if not m:
        raise UsageError(f"bad resolution {text!r}: expected WIDTHxHEIGHT such as 1920x1080")
    w, h = int(m.group(1)), int(m.group(2))
    if w % 2 or h % 2:
        raise UsageError(f"bad resolution {text!r}: width and height must be even for yuv420p")
    return w, h


def plan_clips(count: int, seed: int, out_dir: Path, prefix: str = "test_") -> list[ClipSpec]:
    """The clips to make (pure): a third without noise, a third low, a third medium noise."""
    if count < 1:
        raise UsageError(f"--count must be at least 1, got {count}")
    rng = random.Random(seed)
    specs = []
    for i in range(count):
        noise, strength = NOISE_LEVELS[i % 3]
        pattern = PATTERNS[(i // 3 + rng.randrange(len(PATTERNS))) % len(PATTERNS)]
        pseed, nseed = rng.randrange(1 << 30), rng.randrange(1 << 30)
        specs.append(ClipSpec(i, pattern, noise, strength, pseed, nseed,
                              out_dir / f"{prefix}{i:03d}_{pattern}_{noise}.mp4"))
    return specs


def source_filter(spec: ClipSpec, width: int, height: int, fps: int, duration: float) -> str:
    """The lavfi source graph of a clip (pattern + optional temporal noise), deterministic."""
    size = f"size={width}x{height}:rate={fps}"
    src = {
        "testsrc2": f"testsrc2={size}",
        "mandelbrot": f"mandelbrot={size}",
        "life": f"life={size}:seed={spec.pattern_seed}:ratio=0.3:mold=8:mold_color=#3050a0",
        "gradients": f"gradients={size}:seed={spec.pattern_seed}:speed=0.03",
        "smptehdbars": f"smptehdbars={size}",
        "cellauto": f"cellauto={size}:seed={spec.pattern_seed}:rule=110",
    }[spec.pattern]
    graph = f"{src},trim=duration={duration:g},format=yuv420p"
    if spec.strength:
        graph += f",noise=alls={spec.strength}:allf=t:all_seed={spec.noise_seed}"
    return graph


def ffmpeg_argv(spec: ClipSpec, width: int, height: int, fps: int, duration: float, bitrate: str, gop: int,
                preset: str, ffmpeg: str = "ffmpeg") -> list:
    """The exact ffmpeg command for one clip (H.264 yuv420p, CBR-like bitrate, fixed GOP)."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", source_filter(spec, width, height, fps, duration),
            # one encoder thread: x264's frame threads with VBV rate control are not bit-reproducible
            "-c:v", "libx264", "-threads", "1", "-preset", preset, "-pix_fmt", "yuv420p", "-r", str(fps),
            "-b:v", bitrate, "-maxrate", bitrate, "-bufsize", _double(bitrate),
            "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0",
            "-an", "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
            "-movflags", "+faststart", str(spec.path)]


def _double(bitrate: str) -> str:
    unit = bitrate[-1] if bitrate[-1] in "kKmM" else ""
    num = float(bitrate[:-1] if unit else bitrate)
    return f"{num * 2:g}{unit}"


def generate(count: int, duration: float, resolution: str, fps: int, seed: int, out_dir: Path,
             bitrate: str = "8M", gop: int = 90, preset: str = "medium", progress: bool = True,
             jobs: int | None = None) -> list[Path]:
    """Synthesise ``count`` clips into ``out_dir`` (``jobs`` encoders at a time, one thread each, so the bytes
    depend on the seed only); returns their paths. :class:`TracekitError` on bad input."""
    w, h = parse_resolution(resolution)
    if not 0 < duration <= 3600:
        raise UsageError(f"--duration must be in (0, 3600] seconds, got {duration:g}")
    if not 1 <= fps <= 240:
        raise UsageError(f"--fps must be in 1..240, got {fps}")
    if not BITRATE_RE.match(bitrate):
        raise UsageError(f"bad --bitrate {bitrate!r}: e.g. 8M or 300k")
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise DependencyMissing("ffmpeg not found: install it (apt-get install -y ffmpeg)", name="ffmpeg")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInput(f"cannot create {out_dir}: {exc.strerror}", path=out_dir) from None
    jobs = max(1, jobs or os.cpu_count() or 1)
    specs = plan_clips(count, seed, out_dir)
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    def one(spec: ClipSpec) -> str | None:
        r = subprocess.run(ffmpeg_argv(spec, w, h, fps, duration, bitrate, gop, preset, ffmpeg),
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode == 0:
            return None
        return (r.stderr.strip().splitlines() or ["no message"])[-1]

    errors = []
    with ThreadPoolExecutor(max_workers=jobs) as pool, \
            tqdm(total=len(specs), desc="clips", unit="clip", disable=not progress) as bar:
        futs = {pool.submit(one, spec): spec for spec in specs}
        for fut in as_completed(futs):
            err = fut.result()
            if err:
                errors.append(f"ffmpeg failed on clip {futs[fut].path.name}: {err}")
            bar.update()
    if errors:
        raise StepFailed(errors[0] + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""))
    return [spec.path for spec in specs]
