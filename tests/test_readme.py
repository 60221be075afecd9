"""The README's script reference is generated from --help; it must match the code as it is now."""

from tracekit.core.clidoc import README, SCRIPTS, current_block, reference


def test_readme_script_reference_is_current():
    block = current_block(README.read_text())
    assert block == reference(), "README script reference is stale: run python3 tools/update_readme.py"


def test_every_script_in_the_reference_has_help():
    for script, extra, _ in SCRIPTS:
        from tracekit.core.clidoc import help_text

        text = help_text(script, extra)
        assert "usage:" in text.lower() and "Traceback" not in text, script
