"""The config each DVC stage reads, resolved: what the `config` stage writes for the others to depend on.

``dvc.yaml``'s ``params:`` entries only see keys written in ``params.yaml``; a stage also reads the
defaults of :mod:`xmdpt.core.config` that ``params.yaml`` leaves out. The `config` stage
(``python -m pipelines.config``) loads ``params.yaml`` with every default filled in and writes, per
stage, the sections of :data:`STAGE_SECTIONS` to ``{artifacts_dir}/config/<stage>.yaml``. Each stage
lists its file as a DVC dependency, so a changed value, written or default, reruns exactly the
stages that read its section; an unchanged file leaves them alone (DVC compares the content).

Each file also carries :func:`config_code_fingerprint`: ``xmdpt/core/config.py`` and
``xmdpt/core/config_stages.py`` with their field declarations (names, types, defaults), preset tables and
docstrings taken out. The stages do not list those files themselves (a changed default would rerun
all of them): a field reaches them through its value, any other change to them (validation, presets merging, the legacy layout) through the
fingerprint, which every stage sees. The loading and hashing machinery (``xmdpt/core/typed_config.py``) is
a dependency of every stage.

Which sections a stage reads is decided from the code it runs (the stage's ``run`` and the library
functions it calls with the config), plus the sections it writes into its outputs for later stages
to read back (the `train` stage stores the config in the model folder; sampling reads its ``data``,
``encoders``, ``diffusion`` and ``sample`` sections from there). The checks every stage starts with
(:mod:`xmdpt.orchestration.preflight`, and :func:`xmdpt.core.ray_utils.init_ray` on a cluster) read more, but only to
refuse a run, never to shape an output. ``cluster`` is in no stage's set: where a stage ran is not
one of its parameters.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path
from typing import Any, Mapping

import yaml

from xmdpt.core.config import XMDPTConfig

__all__ = ["STAGE_SECTIONS", "resolved_stage_configs", "config_code_fingerprint", "write_stage_configs"]

STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "synth": ("paths", "data", "synth"),  # writes data/synth, and publishes it to a URL dataset_root
    "pairs": ("paths", "data"),
    "poses": ("paths", "data", "poses"),  # poses.model_path lies under paths.models_dir
    "validate": ("paths",),  # incl. data_specs_dir, the suites' folder
    "autoencoder": ("paths", "data", "autoencoder"),
    "features": ("paths", "data", "encoders", "features"),
    # the model folder keeps data / poses / encoders / sample for sampling; the rest is read here
    "train": ("paths", "data", "poses", "encoders", "model", "diffusion", "train", "sample"),
    # the model, encoders and autoencoder come in through the train / features manifests
    "evaluate": ("paths", "sample", "evaluate"),
    "register": ("paths", "register"),
}

CONFIG_SOURCE = Path(__file__).resolve().with_name("config.py")
# the files whose field declarations the resolved values carry: the tree and its stage sections
CONFIG_SOURCES = (CONFIG_SOURCE, CONFIG_SOURCE.with_name("config_stages.py"))
# module-level tables of config.py that are values, like the dataclass defaults: their effect is in
# the resolved sections (a preset fills the model section), so they are left out of the fingerprint
_VALUE_TABLES = {"MODEL_PRESETS", "_PAPER_ENCODERS"}


def _is_dataclass_def(node: ast.AST) -> bool:
    return isinstance(node, ast.ClassDef) and any(
        (isinstance(d, ast.Name) and d.id == "dataclass")
        or (isinstance(d, ast.Call) and isinstance(d.func, ast.Name) and d.func.id == "dataclass")
        for d in node.decorator_list)


def _strip_docstring(body: list[ast.stmt]) -> list[ast.stmt]:
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        return body[1:] or [ast.Pass()]
    return body


def strip_docs_and_imports(tree: ast.AST) -> ast.AST:
    """``tree`` without docstrings and import statements, in place: what a fingerprint of source code
    should not see (comments never reach the tree). Moving a module or rewording a docstring leaves
    the fingerprint as it was; a changed statement or constant changes it."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            node.body = _strip_docstring(node.body)
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list) and any(isinstance(s, (ast.Import, ast.ImportFrom)) for s in stmts):
                kept = [s for s in stmts if not isinstance(s, (ast.Import, ast.ImportFrom))]
                setattr(node, field, kept or ([ast.Pass()] if field == "body" else []))
    return tree


def source_fingerprint_text(source: str) -> str:
    """The syntax tree of ``source`` without docstrings and imports, as text (see :func:`strip_docs_and_imports`)."""
    return ast.dump(strip_docs_and_imports(ast.parse(source)))


def config_code_fingerprint(sources: Mapping[str, str] | None = None) -> str:
    """SHA-256 of ``xmdpt/core/config.py`` and ``xmdpt/core/config_stages.py`` without what the resolved values
    already carry: the config dataclasses' field declarations, the preset tables, docstrings and import
    statements (comments never reach the syntax tree). Equal for two versions of the files that differ
    only there.

    Args:
        sources: file name (``config.py``) -> its text, in place of the file on disk.
    """
    h = hashlib.sha256()
    for path in CONFIG_SOURCES:
        h.update(_stripped_dump((sources or {}).get(path.name) or path.read_text()).encode())
    return h.hexdigest()


def _stripped_dump(source: str) -> str:
    tree = strip_docs_and_imports(ast.parse(source))
    for node in ast.walk(tree):
        if _is_dataclass_def(node):
            node.body = [stmt for stmt in node.body if not isinstance(stmt, ast.AnnAssign)] or [ast.Pass()]
    for stmt in tree.body:
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id in _VALUE_TABLES for t in targets):
            stmt.value = ast.Constant(None)
    return ast.dump(tree)


def resolved_stage_configs(cfg: XMDPTConfig, fingerprint: str | None = None) -> dict[str, dict[str, Any]]:
    """``{stage: {"config_code": fingerprint, section: {key: value, ...}, ...}}`` for every stage."""
    full = cfg.to_dict()
    code = fingerprint if fingerprint is not None else config_code_fingerprint()
    return {stage: {"config_code": code, **{s: full[s] for s in sections}}
            for stage, sections in STAGE_SECTIONS.items()}


def _dump(stage: str, resolved: Mapping[str, Any]) -> str:
    head = (f"# The config the `{stage}` stage reads, every default filled in: written by the `config`\n"
            f"# stage from params.yaml and the config's defaults; a DVC dep of `{stage}`.\n")
    return head + yaml.safe_dump(dict(resolved), sort_keys=False, default_flow_style=False, width=100)


def write_stage_configs(cfg: XMDPTConfig, out_dir: str | Path) -> dict[str, Path]:
    """Write ``out_dir/<stage>.yaml`` for every stage; returns ``{stage: path}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for stage, resolved in resolved_stage_configs(cfg).items():
        written[stage] = out / f"{stage}.yaml"
        written[stage].write_text(_dump(stage, resolved))
    return written
