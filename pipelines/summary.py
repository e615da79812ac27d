"""Print where the results of `make run` are (metrics, grids, registered model, MLflow UI)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from xmdpt.config import load_config


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    cfg = load_config(args.params)
    art = Path(cfg.paths.artifacts_dir)
    lines = ["", "== xmdpt: results of the embedded default run =="]
    for label, rel in [
        ("validation report", "validate/report.json"),
        ("autoencoder metrics", "autoencoder/metrics.json"),
        ("autoencoder reconstructions", "autoencoder/recon.png"),
        ("training metrics", "train/metrics.json"),
        ("loss curve (dvc plots show --json)", "train/loss.csv"),
        ("evaluation metrics", "evaluate/metrics.json"),
        ("sample grid", "evaluate/grid.png"),
        ("registered model", "register/registered.json"),
    ]:
        p = art / rel
        if p.exists():
            lines.append(f"  {label:<38} {p}")
    reg = art / "register" / "registered.json"
    if reg.exists():
        info = json.loads(reg.read_text())
        lines.append(f"  model URI: {info.get('model_uri')}  (aliases: {', '.join(info.get('aliases', []))})")
    uri = cfg.paths.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")
    lines.append(f"  MLflow UI: make ui   (backend {uri}, http://127.0.0.1:5000)")
    lines.append("  Metrics across experiments: dvc metrics show; dvc exp show")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
