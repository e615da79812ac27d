"""dvc.yaml's deps cover every project file a stage imports, so `dvc repro` cannot call a stage
"up to date" after code it runs has changed.

The import closure of each stage's entry module (``python -m pipelines.<stage>``) is computed from
the source: every ``import``/``from … import`` of ``xmdpt``/``pipelines`` modules, also inside
functions (the lazy imports run too), with the packages' ``__init__.py`` files.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROJECT = ("xmdpt", "pipelines")


def _module_file(module: str) -> Path | None:
    p = REPO.joinpath(*module.split("."))
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else None


def _imported_modules(path: Path) -> set[str]:
    rel = path.relative_to(REPO).with_suffix("")
    package = rel.parts[:-1] if path.name != "__init__.py" else rel.parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            parts = list(package[: len(package) - node.level + 1]) if node.level else []
            base = ".".join(parts + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return {m for m in found if m.split(".")[0] in PROJECT}


def import_closure(module: str) -> set[Path]:
    todo, seen = [_module_file(module)], set()
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        for m in _imported_modules(f):
            parts = m.split(".")
            todo.extend(_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1))
    return seen


def test_every_stage_depends_on_the_code_it_imports():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    problems = {}
    for name, stage in stages.items():
        module = stage["cmd"].split("-m", 1)[1].split()[0]
        deps = [d.rstrip("/") for d in stage.get("deps", []) if not d.startswith("${")]
        files = import_closure(module)
        assert len(files) > 3, (name, files)  # the walk really follows imports
        missing = sorted(str(f.relative_to(REPO)) for f in files
                         if not any(str(f.relative_to(REPO)) == d or str(f.relative_to(REPO)).startswith(d + "/")
                                    for d in deps))
        if missing:
            problems[name] = missing
    assert not problems, f"dvc.yaml deps miss files the stages import: {problems}"


def test_the_closure_follows_lazy_imports():
    files = {str(f.relative_to(REPO)) for f in import_closure("pipelines.evaluate")}
    # evaluate -> xmdpt.evaluation -> (inside a function) xmdpt.sampling.batch -> xmdpt.sampling.pipeline
    assert {"xmdpt/evaluation.py", "xmdpt/sampling/batch.py", "xmdpt/sampling/pipeline.py",
            "xmdpt/precision.py"} <= files
