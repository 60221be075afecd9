"""The package's shape: one home per area, lower layers never import higher ones, no import cycles.

Every ``import`` statement of every module counts, including those inside functions (a cycle hidden in a
function is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "tools" / "tracekit"

# What each area may import besides itself.
ALLOWED = {
    "core": set(),
    "node": {"core"},
    "control": {"core", "node"},
    "trace": {"core"},
    "cluster": {"core", "node", "control", "trace"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    return (PKG.parent / name.replace(".", "/")).with_suffix(".py").exists()


def imports_of(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (absolute names)."""
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("tracekit")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            if not target.startswith("tracekit"):
                continue
            found.add(target)
            # `from tracekit.core import paths`: the submodule is the import
            found |= {f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PKG.rglob("*.py")}


def area(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else None


def test_every_module_has_an_area():
    loose = [m for m in graph() if m not in ("tracekit", "tracekit.__main__") and area(m) is None]
    assert not loose, f"modules outside the areas {sorted(ALLOWED)}: {loose}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for mod, deps in graph().items():
        mine = area(mod)
        for dep in deps:
            theirs = area(dep)
            if mine and theirs and theirs != mine and theirs not in ALLOWED[mine]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "layer violations:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    deps = {m: {d for d in ds if d != m and not m.startswith(d + ".")} for m, ds in graph().items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, stack: list[str]) -> bool:
        state[m] = 1
        for d in sorted(deps.get(m, set())):
            if d not in deps:
                continue
            if state.get(d) == 1:
                cycle.extend(stack[stack.index(d):] + [d] if d in stack else [m, d])
                return True
            if d not in state and visit(d, [*stack, d]):
                return True
        state[m] = 2
        return False

    for m in sorted(deps):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_no_private_names_across_modules():
    bad = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("tracekit")):
                bad += [f"{module_name(path)}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("script", sorted(p.relative_to(PKG.parents[1]).as_posix()
                                          for p in (PKG.parent).rglob("*.py") if "tracekit" not in p.parts))
def test_scripts_are_shims_without_path_edits(script):
    text = (PKG.parents[1] / script).read_text()
    assert "sys.path" not in text and "noqa: E402" not in text, f"{script} edits sys.path"
