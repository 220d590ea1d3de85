"""The package's layout: a folder per pipeline stage, imports that point one way, no import cycle.

Read from the source with `ast` (every import, including those inside functions), so a lazy import cannot hide a
cycle or a dependency that runs against the direction below.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "beam_pipeline"
# Who may import whom, by layer: the launcher builds on the pipeline, the pipeline on its stages, the stages on the
# shared modules (which may import each other). A stage never imports another stage, nor anything above it. The
# report reads what the job wrote, with the job's own flag parsers and limits (launch.options).
SHARED = {"errors", "records", "layout", "listing", "worker", "imports"}
STAGES = {"inputs", "decode", "model", "output"}
LAYER = {**dict.fromkeys(SHARED, 0), **dict.fromkeys(STAGES, 1), "pipeline": 2, "launch": 3, "report": 4}


def _modules() -> dict[str, Path]:
    return {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts): path
        for path in PACKAGE.rglob("*.py")
        if path.name != "__main__.py"
    }


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules `name` imports (resolved to modules, not names inside them)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("beam_pipeline."):
                found.add(target)
    # A package's own __init__ is not a dependency of the modules inside it.
    return {t for t in found if not name.startswith(t + ".")}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _part(module: str) -> str:
    return module.split(".")[1]


def test_no_import_cycle():
    graph = _graph()
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        assert module not in path, "import cycle: " + " -> ".join(path[path.index(module) :] + [module])
        if module in done:
            return
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_dependencies_point_one_way():
    """launch/report -> pipeline -> a stage -> the shared modules (SHARED); stages never import each other."""
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _part(module) != _part(target)
        and (LAYER[_part(target)] > LAYER[_part(module)] or LAYER[_part(target)] == LAYER[_part(module)] != 0)
    ]
    assert not wrong, wrong


def test_a_folder_per_stage_and_few_top_level_modules():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert STAGES | {"launch", "report"} <= folders
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top_level) <= 9, top_level


def test_no_source_file_over_24_kb():
    repo = PACKAGE.parent
    big = [
        f"{path.relative_to(repo)}: {path.stat().st_size:,} bytes"
        for folder in ("beam_pipeline", "tests", "benchmarks", "scripts")
        for path in (repo / folder).rglob("*.py")
        if path.stat().st_size > 24_000
    ]
    assert not big, big
