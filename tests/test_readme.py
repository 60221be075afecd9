"""The script reference (docs/reference.md) is generated from --help; it must match the code as it is now.

The README is the landing page: it must link the reference and name, for every script, the installed command.
"""

import re

from tracekit.core.clidoc import BEGIN, REFERENCE, SCRIPTS, current_block, help_text, reference
from tracekit.core.paths import REPO_ROOT

README = REPO_ROOT / "README.md"


def project_scripts() -> set[str]:
    """The entry point names of ``[project.scripts]`` in pyproject.toml."""
    text = (REPO_ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*=", section, re.M))


def test_script_reference_is_current():
    block = current_block(REFERENCE.read_text())
    assert block == reference(), "docs/reference.md is stale: run python3 tools/update_readme.py"


def test_every_script_in_the_reference_has_help():
    for s in SCRIPTS:
        text = help_text(s.path, s.extra)
        assert "usage:" in text.lower() and "Traceback" not in text, s.path


def test_every_script_names_an_installed_entry_point():
    names = project_scripts()
    assert names, "no [project.scripts] in pyproject.toml"
    for s in SCRIPTS:
        assert s.entry.split()[0] in names, f"{s.path}: {s.entry} is not an entry point in pyproject.toml"
        assert (REPO_ROOT / s.path).is_file(), s.path


def test_readme_is_a_landing_page_that_links_the_reference():
    text = README.read_text()
    assert BEGIN not in text, "the generated reference lives in docs/reference.md, not in the README"
    assert "docs/reference.md" in text
    first_screen = "\n".join(text.splitlines()[:15])
    assert "make demo" in first_screen and "make test" in first_screen
    for img in re.findall(r"\]\((docs/img/[^)]+)\)", text):
        assert (REPO_ROOT / img).is_file(), img
    for s in SCRIPTS:  # every command a user can run, under its installed name too
        assert s.entry.split()[0] in text, f"README does not mention {s.entry}"


def test_readme_links_resolve():
    for doc in (README, *sorted((REPO_ROOT / "docs").glob("*.md"))):
        for target in re.findall(r"\]\(((?:\.\./|docs/)?[\w./-]+\.(?:md|png))(?:#[\w-]+)?\)", doc.read_text()):
            assert (doc.parent / target).resolve().is_file(), f"{doc.name}: broken link {target}"



def test_python_m_tracekit_has_the_same_commands_as_the_entry_points():
    """``python -m tracekit <command>`` and ``tracekit-<command>`` run the same function (as the docs promise)."""
    from tracekit.__main__ import COMMANDS

    text = (REPO_ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    entries = dict(re.findall(r'^([A-Za-z0-9_-]+)\s*=\s*"([^"]+)"', section, re.M))
    assert entries == {f"tracekit-{name}": target for name, target in COMMANDS.items()}
