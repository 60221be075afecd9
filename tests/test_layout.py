"""The package's shape: one home per area, lower layers never import higher ones, no import cycles, no private
name of one module used by another (imported, read as ``module._name``, or called on its objects).

Every ``import`` statement of every module counts, including those inside functions (a cycle hidden in a
function is still a cycle)."""

from __future__ import annotations

import ast
import re
import sys
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


# ---- private attributes of other modules ----

# Paths (relative to the package) not checked for private attributes of other modules.
PRIVATE_ACCESS_SKIPPED: tuple[str, ...] = ()


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve_import(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module name an ``ImportFrom`` reads from."""
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    if not node.level:
        return node.module or ""
    base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
    return f"{base}.{node.module}" if node.module else base


def private_accesses(path: Path) -> list[str]:
    """``module._name``, ``ImportedName._name`` and ``obj._name`` (``obj = ImportedClass(...)``) where the module
    or the imported name belongs to another tracekit module."""
    me = module_name(path)
    tree = ast.parse(path.read_text(), str(path))
    modules: dict[str, str] = {}  # local name -> another tracekit module
    names: dict[str, str] = {}  # local name -> "module.Name" imported from another tracekit module
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("tracekit") and a.asname:
                    modules[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            target = resolve_import(path, node)
            if not target.startswith("tracekit"):
                continue
            for a in node.names:
                full = f"{target}.{a.name}"
                if is_module(full) or (PKG.parent / full.replace(".", "/") / "__init__.py").exists():
                    modules[a.asname or a.name] = full
                elif target != me:
                    names[a.asname or a.name] = full
    modules = {k: v for k, v in modules.items() if v != me}

    def owner(expr: ast.expr) -> str | None:
        """The other module (or its imported name) ``expr`` stands for, None when it is this module's own."""
        text = ast.unparse(expr)
        if text in modules:
            return modules[text]
        if text in names:
            return names[text]
        if text.startswith("tracekit.") and text != me and (is_module(text) or text in names.values()):
            return text
        return None

    # objects made by calling a class/function of another module: `x = Other(...)`, `self.x = Other(...)`
    made: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call):
            src = owner(node.value.func)
            if src is None and isinstance(node.value.func, ast.Attribute):
                base = owner(node.value.func.value)
                src = f"{base}.{node.value.func.attr}" if base else None
            if src:
                for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                    if isinstance(t, (ast.Name, ast.Attribute)):
                        made[ast.unparse(t)] = src
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            src = owner(node.value)
            what = "of"
            if src is None and ast.unparse(node.value) in made:
                src, what = made[ast.unparse(node.value)], "on an object made by"
            if src:
                bad.append(f"{me}:{node.lineno}: {ast.unparse(node)} ({what} {src})")
    return bad


def private_definitions(path: Path) -> set[str]:
    """The private names a module defines: functions, methods, classes, assigned names and attributes."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            found.add(node.attr)
    return {name for name in found if is_private(name)}


def foreign_private_members(path: Path, defined_elsewhere: dict[str, set[str]]) -> list[str]:
    """``obj._name`` (obj not ``self``/``cls``) where this module defines no ``_name`` but another tracekit module
    does: a private method or attribute of another module's class, used from outside (duck-typed objects too)."""
    me = module_name(path)
    mine = private_definitions(path)
    bad = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr not in mine
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            owners = sorted(m for m, names in defined_elsewhere.items() if m != me and node.attr in names)
            if owners:
                bad.append(f"{me}:{node.lineno}: {ast.unparse(node)} (defined in {', '.join(owners)})")
    return bad


def private_attribute_findings(skipped: tuple[str, ...] = ()) -> list[str]:
    """Every finding of both rules over the package, one per place (``module:line: expression``)."""
    paths = sorted(PKG.rglob("*.py"))
    defined = {module_name(p): private_definitions(p) for p in paths}
    found: dict[str, str] = {}
    for path in paths:
        if path.relative_to(PKG).as_posix().startswith(skipped):
            continue
        for line in private_accesses(path) + foreign_private_members(path, defined):
            found.setdefault(line.partition(" (")[0], line)
    return sorted(found.values())


def test_no_private_attributes_of_other_modules():
    bad = private_attribute_findings(PRIVATE_ACCESS_SKIPPED)
    assert not bad, "private attributes of other tracekit modules:\n" + "\n".join(bad)


def test_the_private_attribute_check_finds_what_it_should(tmp_path, monkeypatch):
    pkg = tmp_path / "tracekit"
    (pkg / "core").mkdir(parents=True)
    (pkg / "control").mkdir()
    for init in (pkg, pkg / "core", pkg / "control"):
        (init / "__init__.py").write_text("")
    (pkg / "core" / "keys.py").write_text("_X = 1\n\nclass Keys:\n    def _render(self):\n        return self._x\n")
    (pkg / "control" / "user.py").write_text(
        "import tracekit.core.keys as kk\nimport tracekit.core.keys\nfrom tracekit.core import keys\n"
        "from tracekit.core.keys import Keys\n\n\ndef f(duck):\n    k = Keys()\n"
        "    return kk._X, tracekit.core.keys._X, keys._X, Keys._render, k._render(), duck._render(), duck._own\n"
        "\n\ndef _own():\n    return keys.Keys\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    found = [line.partition(" (")[0] for line in private_attribute_findings()]
    assert found == [f"tracekit.control.user:9: {expr}" for expr in sorted(
        ["kk._X", "tracekit.core.keys._X", "keys._X", "Keys._render", "k._render", "duck._render"])]


def test_code_cites_only_documents_in_the_repository():
    """Contracts are cited from docs/internals.md; a design document or an issue tracker is not in the clone."""
    pattern = re.compile(r"DESIGN(\.md)?\s*§|DESIGN\.md|\bissue #?\d+")
    roots = [PKG.parent, PKG.parents[1] / "tests", PKG.parents[1] / "bench"]
    bad = [f"{p.relative_to(PKG.parents[1])}:{n}" for root in roots for p in root.rglob("*.py")
           for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)
           and p.name not in ("test_layout.py", "test_docs.py")]
    assert not bad, "citations of documents outside the repository:\n" + "\n".join(bad)
