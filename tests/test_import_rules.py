"""The floor plan's import rule, read from the source (every import statement, lazy ones inside functions too).

- Imports between stages point down into pretrain's ground only (GROUND_FOLDERS below: ground/ and data/);
  pretrain imports no other stage, and its ground imports nothing of pretrain beyond the ground.
- pretrain's top level holds only its doors (DOORS); the rest lives in rooms.
- export and retrieval never import each other; serve composes them (and may import both).
- retrieval's ground is numpy-only (NUMPY_GROUND): `import retrieval` loads no torch.
- No import cycle anywhere: no group of modules reaches itself through imports (not only pairs).

A new arrow that breaks the rule fails here with the file, line and import named; widening GROUND_FOLDERS is a
design change, to be made on purpose (docs: docs/development.md).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "export", "retrieval", "serve")
# pretrain's ground: the folders the later stages may import. Everything else in pretrain is training (train/),
# methods, views, fine-tuning or study. `pretrain` itself gives __version__.
GROUND_FOLDERS = ("pretrain.ground", "pretrain.data")
# retrieval runs without torch: of the ground, it imports only these numpy-only modules
NUMPY_GROUND = {"pretrain", "pretrain.ground.atomic", "pretrain.ground.schema", "pretrain.ground.knn",
                "pretrain.ground.embeddings", "pretrain.ground.doctor", "pretrain.ground.errors",
                "pretrain.ground.cliargs"}
# pretrain's top level holds only its doors: the package, `python -m pretrain`, the CLI, the quickstart
DOORS = {"__init__.py", "__main__.py", "cli.py", "quickstart.py"}
MAY_IMPORT = {  # stage -> the other stages it may import
    "pretrain": set(),
    "export": {"pretrain"},
    "retrieval": {"pretrain"},
    "serve": {"pretrain", "export", "retrieval"},
}


def in_ground(target: str) -> bool:
    return target == "pretrain" or any(target == f or target.startswith(f + ".") for f in GROUND_FOLDERS)


def module_name(path: Path) -> str:
    return module_name_in(path, ROOT)


def module_name_in(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) of every import in `path`; `from a import b` names a.b when that is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (ROOT / Path(*sub.split(".")) / "__init__.py").is_file()
                found.append((node.lineno, sub if is_module else node.module))
    return found


def project_files() -> list[Path]:
    return sorted(p for stage in STAGES for p in (ROOT / stage).rglob("*.py"))


def broken_rules(files: list[Path], root: Path = ROOT) -> list[str]:
    errors = []
    for path in files:
        stage = path.relative_to(root).parts[0]
        for line, target in imports(path):
            other = target.split(".")[0]
            where = f"{path.relative_to(root)}:{line}: imports {target}"
            if module_name_in(path, root).startswith("pretrain.ground.") and other == "pretrain" and \
                    not in_ground(target):
                errors.append(f"{where}: pretrain's ground imports only the ground ({', '.join(GROUND_FOLDERS)})")
            if other not in STAGES or other == stage:
                continue
            if other not in MAY_IMPORT[stage]:
                errors.append(f"{where}: {stage} may not import {other}")
            elif other == "pretrain" and not in_ground(target):
                errors.append(f"{where}: outside pretrain's ground ({', '.join(GROUND_FOLDERS)})")
            elif stage == "retrieval" and target not in NUMPY_GROUND:
                errors.append(f"{where}: retrieval imports only numpy-only ground modules "
                              f"({', '.join(sorted(NUMPY_GROUND))})")
    return errors


def test_imports_between_stages_point_down_into_the_ground() -> None:
    errors = broken_rules(project_files())
    assert not errors, "imports that break the rule:\n" + "\n".join(errors)


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that reach each other through imports (strongly connected components of two or
    more modules, or one that imports itself), each sorted; Tarjan's algorithm, iterative."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, targets = work[-1]
            for target in targets:
                if target not in edges:
                    continue
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(edges[target]))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1 or node in edges[node]:
                        cycles.append(sorted(group))
    return sorted(cycles)


def test_no_two_modules_import_each_other() -> None:
    """Nor around a longer circle: no import cycle anywhere (strongly connected components)."""
    edges = {module_name(p): {t for _, t in imports(p)} for p in project_files()}
    cycles = import_cycles(edges)
    assert not cycles, "modules that import each other, directly or around a circle: " + \
        "; ".join(" -> ".join(group) for group in cycles)


def test_the_cycle_check_catches_a_planted_circle() -> None:
    """The check itself: a circle of three modules (no pair imports each other) and a self-import are found."""
    edges = {module_name(p): {t for _, t in imports(p)} for p in project_files()}
    planted = {**edges, "export.embed": edges["export.embed"] | {"export.embedder"},
               "export.embedder": edges["export.embedder"] | {"export.onnx_export"},
               "export.onnx_export": edges["export.onnx_export"] | {"export.embed"}}
    assert ["export.embed", "export.embedder", "export.onnx_export"] in import_cycles(planted)
    assert import_cycles({"a": {"a"}, "b": {"a"}}) == [["a"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_import_retrieval_loads_no_torch() -> None:
    code = ("import sys, retrieval, retrieval.cli, retrieval.knn, retrieval.metrics, retrieval.evaluate; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'export', 'serve')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_rule_catches_a_forbidden_arrow(tmp_path: Path) -> None:
    """The scan itself: each kind of forbidden import, written into a stage, is reported."""
    cases = {"export": "from retrieval.index import Index", "retrieval": "from pretrain.train.trainer import Trainer",
             "pretrain": "import serve.engine", "pretrain/ground": "from pretrain.train.config import Config"}
    for stage, line in cases.items():
        probe = tmp_path / stage / "probe.py"
        probe.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text(f"def f():\n    {line}\n")
        expected = {"export": "imports retrieval.index: export may not import retrieval",
                    "retrieval": "imports pretrain.train.trainer: outside pretrain's ground "
                                 f"({', '.join(GROUND_FOLDERS)})",
                    "pretrain": "imports serve.engine: pretrain may not import serve",
                    "pretrain/ground": "imports pretrain.train.config: pretrain's ground imports only the ground "
                                       f"({', '.join(GROUND_FOLDERS)})"}[stage]
        assert broken_rules([probe], tmp_path) == [f"{stage}/probe.py:2: {expected}"]


def test_the_import_paths_readme_showed_before_the_floor_plan_still_work() -> None:
    from pretrain.data import load_rgb
    from pretrain.data.images import load_rgb as moved_load_rgb
    from pretrain.ground.embeddings import write_embeddings as ground_writer
    from pretrain.ground.knn import knn_vote as ground_vote
    from retrieval import write_embeddings
    from retrieval.knn import knn_vote

    assert (load_rgb, write_embeddings, knn_vote) == (moved_load_rgb, ground_writer, ground_vote)


def test_pretrain_top_level_holds_only_its_doors() -> None:
    """Everything else lives in a room: ground/, train/, finetune/, methods/, views/, data/, study/."""
    top = {p.name for p in (ROOT / "pretrain").glob("*.py")}
    assert top == DOORS, f"files at pretrain/'s top level beyond its doors: {sorted(top - DOORS)}"
