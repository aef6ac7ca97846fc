"""The layout of DESIGN.md, checked on the source: who may import whom, and no import cycle.

Imports are read from the AST of every module under the project's packages, at any depth
(function-level and ``TYPE_CHECKING`` imports count too). An edge goes to the module named, not
to the packages above it, so a package ``__init__`` that re-exports its parts is no cycle.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("anon_core", "manifests", "jobs", "cluster")
EVALUATE = "faceveil.jobs.evaluate"
EVAL_CLI = "faceveil.jobs.cli"  # the top-level CLI registers ``eval``


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = ("faceveil", *path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules that module ``name`` (at ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in modules else base)
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, modules) for name, path in modules.items()}


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _offences(rule) -> list[str]:
    return sorted(f"{a} -> {b}" for a, deps in _graph().items() for b in deps if rule(a, b))


def test_anon_core_imports_nothing_from_jobs_or_manifests() -> None:
    core = "faceveil.anon_core"
    assert _offences(lambda a, b: _inside(a, core) and not _inside(b, core)) == []


def test_evaluate_needs_only_anon_core() -> None:
    assert (
        _offences(
            lambda a, b: (
                _inside(a, EVALUATE)
                and not (_inside(b, EVALUATE) or _inside(b, "faceveil.anon_core"))
            )
        )
        == []
    )


def test_nothing_in_the_job_imports_evaluate() -> None:
    assert (
        _offences(lambda a, b: _inside(b, EVALUATE) and not (_inside(a, EVALUATE) or a == EVAL_CLI))
        == []
    )


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_reports_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_the_project_imports() -> None:
    graph = _graph()
    assert "faceveil.jobs.restore" in graph["faceveil.jobs.restore_cli"]
    assert "faceveil.manifests.threshold" in graph["faceveil.manifests.escrow"]


def test_installed_under_one_name(tmp_path) -> None:
    """Installed, the packages answer only as faceveil.*: a bare ``import jobs`` from another
    folder fails (no generic top-level names on a shared cluster image)."""
    code = (
        "import importlib.util, faceveil.jobs.cli, faceveil.anon_core.pipeline\n"
        "assert all(importlib.util.find_spec(n) is None\n"
        "           for n in ('jobs', 'anon_core', 'manifests', 'cluster'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def _module_map() -> dict[str, str]:
    """The README's module map: package folder -> its row's list of modules."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 3 and cells[1].startswith("`") and cells[1].endswith("/`"):
            rows[cells[1].strip("`").rstrip("/")] = cells[2]
    return rows


def test_readme_module_map_names_every_module() -> None:
    """Each top-level module and subpackage of anon_core, manifests and jobs is named (as
    `name` or `name/`) in its package's row of the README's module map."""
    rows = _module_map()
    missing = []
    for package in ("anon_core", "manifests", "jobs"):
        for path in sorted((ROOT / package).iterdir()):
            if path.name.startswith(("_", ".")) or path.name == "evaluate":
                continue
            if path.suffix == ".py":
                named = f"`{path.stem}`"
            elif (path / "__init__.py").exists():
                named = f"`{path.name}/`"
            else:
                continue
            if named not in rows.get(package, ""):
                missing.append(f"{package}/{path.name}")
    assert missing == [], "not in the README's module map: " + ", ".join(missing)
    assert "jobs/evaluate" in rows
