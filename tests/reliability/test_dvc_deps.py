"""dvc.yaml's deps cover every project file a stage imports, so `dvc repro` cannot call a stage
"up to date" after code it runs has changed; and list no project code a stage does not import, so a
change reruns only the stages that run it (a line changed in ``xmdpt/model/`` reruns train, evaluate
and register, not the data stages).

The import closure of each stage's entry module (``python -m pipelines.<stage>``) is computed from
the source: every ``import``/``from … import`` of ``xmdpt``/``pipelines`` modules, also inside
functions (the lazy imports run too), with the packages' ``__init__.py`` files.

``xmdpt/core/config.py`` (with ``xmdpt/core/config_stages.py``) is the one exception: the stages depend on their resolved config
(``${paths.artifacts_dir}/config/<stage>.yaml``, written by the ``config`` stage, which depends on
``xmdpt/core/config.py``) instead, so a changed default reruns only the stages that read its section.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROJECT = ("xmdpt", "pipelines")
# project code a stage runs without importing it: register logs the MLflow model from this file
READ_CODE = {"register": ["xmdpt.sampling.mlflow_model"]}


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
    parts = module.split(".")  # `python -m pkg.mod` runs pkg/__init__.py first
    todo, seen = [_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)], set()
    while todo:
        f = todo.pop()
        if f is None or f in seen:
            continue
        seen.add(f)
        for m in _imported_modules(f):
            parts = m.split(".")
            todo.extend(_module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1))
    return seen


CONFIG = {"xmdpt/core/config.py", "xmdpt/core/config_stages.py"}  # the config tree: values, not code, for the stages


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _code_deps(stage: dict) -> list[str]:
    return [d.rstrip("/") for d in stage.get("deps", []) if not d.startswith("${")]


def _closure(name: str, stage: dict) -> set[str]:
    module = stage["cmd"].split("-m", 1)[1].split()[0]
    files = set().union(*(import_closure(m) for m in [module, *READ_CODE.get(name, [])]))
    return {str(f.relative_to(REPO)) for f in files}


def _resolved_config(name: str) -> str:
    return f"${{paths.artifacts_dir}}/config/{name}.yaml"


def test_every_stage_depends_on_the_code_it_imports():
    problems = {}
    for name, stage in _stages().items():
        deps, files = _code_deps(stage), _closure(name, stage)
        assert len(files) > 3, (name, files)  # the walk really follows imports
        if _resolved_config(name) in stage.get("deps", []):
            files -= CONFIG  # its values and code reach the stage through the resolved config
        missing = sorted(f for f in files if not any(f == d or f.startswith(d + "/") for d in deps))
        if missing:
            problems[name] = missing
    assert not problems, f"dvc.yaml deps miss files the stages import: {problems}"


def test_no_stage_depends_on_project_code_it_does_not_import():
    """A listed project file must be in the stage's import closure (a listed folder must hold one
    such file): an extra dep reruns the stage, and everything after it, for code it never runs."""
    problems = {}
    for name, stage in _stages().items():
        files = _closure(name, stage)
        if name != "config":
            files -= CONFIG  # the config stage carries it to the others
        extra = [d for d in _code_deps(stage) if d.split("/")[0] in PROJECT
                 and not any(f == d or f.startswith(d + "/") for f in files)]
        if extra:
            problems[name] = extra
    assert not problems, f"dvc.yaml deps list project code the stages do not import: {problems}"


def test_the_closure_follows_lazy_imports():
    files = {str(f.relative_to(REPO)) for f in import_closure("pipelines.evaluate")}
    # evaluate -> xmdpt.evaluation.pairs -> xmdpt.sampling.batch -> xmdpt.sampling.pipeline -> (inside
    # XMDPTPipeline.from_pretrained) xmdpt.core.model_resolver
    assert {"xmdpt/evaluation/stage.py", "xmdpt/sampling/batch.py", "xmdpt/sampling/pipeline.py",
            "xmdpt/core/precision.py", "xmdpt/core/model_resolver.py"} <= files
