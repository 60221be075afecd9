"""The documentation quotes the code's defaults: change a default and this fails until the docs follow.

The demo's defaults are read from the code itself (``tracekit.cluster.demo.parse_args`` with none of its
environment variables set, i.e. what ``make demo`` uses), never copied into this test. Then every place in
README.md and docs/*.md that quotes one of them is checked:

* ``VAR`` (value) — the README's make-target table;
* | ``VAR`` | ``--flag`` | value | — the variables table in docs/cluster.md;
* prose on a line about the demo: "24 tasks", "2 emulated nodes", "2-node", a task mix such as
  ``fast1080p=1,medium480p=2,light1c=3``, "~20 s" / "about 20 s", and the generated clips "640x360, 2 s".

Examples that *override* a default (``make demo TOTAL=40 ...``, ``--mix "..."``) are not quotes of it.
"""

from __future__ import annotations

import re

import pytest

from tracekit.cluster import demo
from tracekit.core.clidoc import help_text
from tracekit.core.paths import REPO_ROOT

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
# The environment variables the demo's flags default to (see `tools/demo.py --help`).
DEMO_ENV = ("RUN_ID", "NODES", "TOTAL", "MIX", "SEED", "WEIGHER", "WEIGHER_ORDER", "BINDING", "RATIO", "REDIS_URL",
            "NETNS", "PROC_INTERVAL_MS", "TIMEOUT", "INPUTS", "TRACEKIT_RUN_ID_FILE")
MIX_RE = re.compile(r"\b[a-z][a-z0-9]*=\d+(?:,[a-z][a-z0-9]*=\d+)+\b")
OVERRIDE_RE = re.compile(r"\b(?:NODES|TOTAL|MIX|SEED|RATIO|BINDING|WEIGHER)=|--(?:mix|total|nodes)[ =]\S")
WORDS = {"one": 1, "two": 2, "three": 3, "four": 4}


def num(text: str) -> float:
    return float(WORDS.get(text.lower(), text))


@pytest.fixture(scope="module")
def defaults() -> dict[str, str]:
    """The demo's defaults as the docs spell them, keyed by the make variable."""
    mp = pytest.MonkeyPatch()
    for name in DEMO_ENV:
        mp.delenv(name, raising=False)
    try:
        cfg = demo.parse_args([])
    finally:
        mp.undo()
    return {"NODES": str(cfg.nodes), "TOTAL": str(cfg.total), "MIX": cfg.mix, "SEED": str(cfg.seed),
            "WEIGHER": cfg.weigher or "first-fit", "WEIGHER_ORDER": cfg.weigher_order, "BINDING": cfg.binding,
            "RATIO": f"{cfg.ratio:.1f}", "NETNS": cfg.netns or "auto", "PROC_INTERVAL_MS": str(cfg.interval_ms),
            "TIMEOUT": f"{cfg.timeout_s:g}"}


def clips() -> tuple[str, float, int]:
    """Resolution, seconds and number of the clips the demo generates (DEMO_CLIPS over the script's defaults)."""
    args = dict(zip(demo.DEMO_CLIPS[1::2], demo.DEMO_CLIPS[2::2]))
    count = int(re.search(r"number of clips \(default (\d+)\)", help_text("tools/generate_test_videos.py"))[1])
    return args["--resolution"], float(args["--duration"]), count


def same(quoted: str, value: str) -> bool:
    quoted = quoted.strip().strip("`").strip('"')
    if quoted in ('""', "''") or "first-fit" in quoted:  # the weigher: '' means first-fit
        quoted = "first-fit"
    try:
        return float(quoted) == float(value)
    except ValueError:
        return quoted == value


def demo_lines() -> list[tuple[str, int, str]]:
    """(file, line number, text) of every line about the demo (in a section whose chapter heading names the
    demo, or naming it itself) that does not override a default."""
    out = []
    for doc in DOCS:
        chapter = sub = ""
        for i, line in enumerate(doc.read_text().splitlines(), 1):
            if re.match(r"#{1,2} ", line):
                chapter, sub = line.lower(), ""
            elif line.startswith("#"):
                sub = line.lower()
            about_demo = "demo" in chapter + sub + line.lower()
            # an example that overrides a default (`make demo NODES=3`) is not a quote of it: drop that code
            # span, or the whole line when it is itself such an example (a line of a shell block)
            line = re.sub(r"`[^`]*`", lambda m: "" if OVERRIDE_RE.search(m[0]) else m[0], line)
            if about_demo and "chaos" not in line.lower() and not OVERRIDE_RE.search(line):
                out.append((doc.relative_to(REPO_ROOT).as_posix(), i, line))
    return out


def test_the_demo_defaults_come_from_the_code(defaults):
    assert defaults["TOTAL"].isdigit() and MIX_RE.fullmatch(defaults["MIX"]), defaults


def test_make_variable_quotes_match_the_code(defaults):
    found, bad = set(), []
    for where, n, line in demo_lines():
        for var, value in defaults.items():
            quotes = re.findall(rf"`{var}` \((`[^`]*`|[^)`]*)\)", line)  # README: `TOTAL` (24)
            quotes += re.findall(rf"^\| `{var}` \| `--[\w-]+` \| ([^|]+) \|", line)  # cluster.md's table
            for q in quotes:
                found.add((where, var))
                if not same(q, value):
                    bad.append(f"{where}:{n}: {var} quoted as {q.strip()!r}, the code says {value!r}")
    assert not bad, "\n".join(bad)
    # the quotes this test exists for must still be there (a reworded table would silently check nothing)
    for place in [("README.md", v) for v in ("NODES", "TOTAL", "MIX", "SEED", "BINDING", "RATIO")] + \
                 [("docs/cluster.md", v) for v in defaults]:
        assert place in found, f"{place[0]} no longer quotes the default of {place[1]}"


def test_prose_about_the_demo_matches_the_code(defaults):
    bad, seen = [], set()
    for where, n, line in demo_lines():
        for m in MIX_RE.finditer(line):
            seen.add("mix")
            if m[0] != defaults["MIX"]:
                bad.append(f"{where}:{n}: mix {m[0]} (code: {defaults['MIX']})")
        for m in re.finditer(r"\b(\d+|two|three|four)(?: ffmpeg)? tasks\b", line, re.I):
            seen.add("tasks")
            if num(m[1]) != float(defaults["TOTAL"]):
                bad.append(f"{where}:{n}: {m[0]!r} (code: {defaults['TOTAL']} tasks)")
        for m in re.finditer(r"\b(\d+|two|three|four)(?:-node\b| (?:emulated )?nodes\b)", line, re.I):
            seen.add("nodes")
            if num(m[1]) != float(defaults["NODES"]):
                bad.append(f"{where}:{n}: {m[0]!r} (code: {defaults['NODES']} nodes)")
    assert not bad, "\n".join(bad)
    assert seen == {"mix", "tasks", "nodes"}, f"the docs no longer describe the demo's defaults in prose: {seen}"


def test_the_demo_duration_is_quoted_the_same_everywhere():
    """The wall time is not a constant of the code; every page must at least give the same figure."""
    quotes = {}
    for where, n, line in demo_lines():
        for m in re.finditer(r"(?:~|about )(\d+) s\b", line):
            if "budget" not in line[m.end():m.end() + 20]:
                quotes[f"{where}:{n}"] = m[1]
    assert len(set(quotes.values())) == 1, f"the demo's duration is quoted differently: {quotes}"


def test_the_demo_inputs_are_quoted_as_generated():
    res, seconds, count = clips()
    lines = [(w, n, line) for w, n, line in demo_lines() if "inputs/demo" in line or "clips" in line]
    bad, seen = [], 0
    for where, n, line in lines:
        for m in re.finditer(r"\b(\d+) clips\b", line):
            seen += 1
            if int(m[1]) != count:
                bad.append(f"{where}:{n}: {m[0]!r} (code: {count} clips)")
        for m in re.finditer(r"\b(\d{3,4}x\d{3,4})\b", line):
            seen += 1
            if m[1] != res:
                bad.append(f"{where}:{n}: resolution {m[1]} (code: {res})")
    assert not bad, "\n".join(bad)
    assert seen, "the docs no longer say which clips the demo generates"


def test_docs_name_no_old_module_path():
    """The package was split into areas: tools/tracekit/<module>.py paths now live under an area."""
    areas = {p.name for p in (REPO_ROOT / "tools" / "tracekit").iterdir() if (p / "__init__.py").exists()}
    bad = []
    for doc in DOCS:
        for n, line in enumerate(doc.read_text().splitlines(), 1):
            for m in re.finditer(r"tools/tracekit/([\w./{},-]+)", line):
                head = m[1].split("/")[0]
                if head not in areas and head not in ("", "__main__.py"):
                    bad.append(f"{doc.name}:{n}: tools/tracekit/{m[1]}")
                elif head in areas and "/" in m[1] and "{" not in m[1]:
                    path = REPO_ROOT / "tools" / "tracekit" / m[1].rstrip(".,")
                    if not path.exists():
                        bad.append(f"{doc.name}:{n}: tools/tracekit/{m[1]} does not exist")
    assert not bad, "\n".join(bad)


def test_no_document_outside_the_repository_is_cited():
    for doc in DOCS:
        assert "DESIGN" not in doc.read_text(), f"{doc.name} cites DESIGN.md; cite docs/internals.md instead"
