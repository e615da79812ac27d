"""Print where the results of `make run` are (metrics, grids, registered model, MLflow UI)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from xmdpt.core.config import load_config


def comparison_lines(metrics_path: Path) -> list[str]:
    """One line per paired comparison in the evaluation metrics: mean difference, interval, verdict."""
    if not metrics_path.exists():
        return []
    comps = json.loads(metrics_path.read_text()).get("comparisons") or {}
    out = ["  paired comparisons (mean difference A - B, 95% bootstrap interval, the side it favours):"] if comps else []
    for name, c in comps.items():
        if c is None:
            out.append(f"    {name:<46} n/a (fewer than 2 pairs with values)")
        else:
            out.append(f"    {name:<46} {c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}] "
                       f"n={c['n']:<3} -> {c['better']}")
    return out


def appearance_lines(metrics_path: Path) -> list[str]:
    """Per body part: the model's colour error beside the other-identity baseline and the same-person
    floor (what copying the clothes exactly scores), and the share of that gap the model closes."""
    if not metrics_path.exists():
        return []
    m = json.loads(metrics_path.read_text())
    out = []
    for part in ("torso", "legs"):
        gap = m.get(f"synthetic_colour_gap_closed_{part}_detail")
        if not gap:
            continue
        if not out:
            out.append("  appearance (colour error, lower is better; gap closed = (other - model) / (other - floor)):")
        out.append(f"    {part:<6} model {gap['mean_model']:.3f}  other identity {gap['mean_baseline']:.3f}  "
                   f"same-person floor {gap['mean_floor']:.3f}  gap closed {gap['share']:.0%} "
                   f"[{gap['ci'][0]:.0%}, {gap['ci'][1]:.0%}] n={gap['n']}")
    return out


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
        ("sample grid (one row per person)", "evaluate/grid.png"),
        ("worst rows by colour error", "evaluate/grid_worst.png"),
        ("registered model", "register/registered.json"),
    ]:
        p = art / rel
        if p.exists():
            lines.append(f"  {label:<38} {p}")
    lines.extend(appearance_lines(art / "evaluate" / "metrics.json"))
    lines.extend(comparison_lines(art / "evaluate" / "metrics.json"))
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
