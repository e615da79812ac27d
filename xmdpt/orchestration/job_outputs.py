"""The DVC outputs of a stage run as a Ray job, and the job side of bringing them back.

:func:`stage_outputs` reads the paths a stage declares in ``dvc.yaml`` (``outs``, ``metrics``,
``plots``, templated from the config); :func:`upload_outputs` copies them from the job into the
job directory (``{job_dir}/outputs/<path>``, listed in ``{job_dir}/outputs.json``), from where
:func:`xmdpt.orchestration.cluster.download_outputs` brings them to the submitter.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from xmdpt.core.config import ConfigError, XMDPTConfig
from xmdpt.core.storage import LOCAL_STORE, filesystem, is_url, join

logger = logging.getLogger(__name__)

_VAR = re.compile(r"\$\{\s*([A-Za-z0-9_.]+)\s*\}")


def _lookup(params: dict[str, Any], dotted: str, where: str) -> str:
    node: Any = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{where}: ${{{dotted}}} is not a params key")
        node = node[part]
    return str(node)


def stage_outputs(stage: str, cfg: XMDPTConfig, dvc_yaml: str | Path = "dvc.yaml") -> list[str]:
    """Paths the DVC stage declares as ``outs``, ``metrics`` and ``plots``, templated from ``cfg``.

    A stage missing from ``dvc.yaml`` (or no ``dvc.yaml``) falls back to ``{artifacts_dir}/{stage}``.
    """
    dvc_yaml = Path(dvc_yaml)
    fallback = [join(cfg.paths.artifacts_dir, stage)]
    if not dvc_yaml.is_file():
        return fallback
    doc = yaml.safe_load(dvc_yaml.read_text()) or {}
    spec = (doc.get("stages") or {}).get(stage)
    if spec is None:
        return fallback
    params = cfg.to_dict()
    out: list[str] = []
    for section in ("outs", "metrics", "plots"):
        for entry in spec.get(section) or []:
            raw = next(iter(entry)) if isinstance(entry, dict) else entry
            where = f"{dvc_yaml}: stages.{stage}.{section}"
            out.append(_VAR.sub(lambda m: _lookup(params, m.group(1), where), str(raw)))
    return out


def upload_outputs(stage: str, cfg: XMDPTConfig, job_dir: str, root: str | Path = ".",
                   dvc_yaml: str | Path | None = None) -> list[dict[str, Any]]:
    """Job side: copy the stage's repo-relative DVC outputs to ``{job_dir}/outputs/`` and list them
    in ``{job_dir}/outputs.json``.

    Outputs given as URLs or absolute paths are already where the submitter sees them and are
    skipped; declared outputs the stage did not write are recorded as missing.
    """
    root = Path(root).resolve()
    dvc_yaml = Path(dvc_yaml) if dvc_yaml is not None else root / "dvc.yaml"
    fs, base = filesystem(job_dir)
    record: list[dict[str, Any]] = []
    for out in stage_outputs(stage, cfg, dvc_yaml):
        if is_url(out) or os.path.isabs(out) or Path(out).as_posix().startswith(LOCAL_STORE + "/"):
            # the store folders: the job writes the store itself (shared filesystem or s3://); the
            # submitter keeps its own data/store/<stage> (replacing it would drop earlier local runs)
            record.append({"path": out, "kind": "shared"})
            continue
        src = root / out
        if not src.exists():
            logger.warning("stage %r declares output %s but did not write it under %s", stage, out, root)
            record.append({"path": out, "kind": "missing"})
            continue
        files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
        rels = []
        for f in files:
            rel = f.relative_to(root).as_posix()
            dest = f"{base.rstrip('/')}/outputs/{rel}"
            fs.makedirs(os.path.dirname(dest), exist_ok=True)
            fs.put_file(str(f), dest)
            rels.append(rel)
        record.append({"path": Path(out).as_posix(), "kind": "file" if src.is_file() else "dir", "files": rels,
                       "bytes": sum(f.stat().st_size for f in files)})
    fs.makedirs(base, exist_ok=True)
    with fs.open(f"{base.rstrip('/')}/outputs.json", "w") as f:
        f.write(json.dumps({"stage": stage, "outputs": record}, indent=2) + "\n")
    logger.info("uploaded %d output(s) of stage %r to %s", sum(r["kind"] in ("file", "dir") for r in record),
                stage, job_dir)
    return record
