"""Quality of each sampler setting on the embedded benchmark, paired against DDIM-50.

Run it in a checkout whose DAG has run (``make run``): it reads that run's validated test pairs and its
pipeline folder (``artifacts/evaluate/manifest.json``), generates the same pairs with the same seeds
through the evaluate stage's own generation path (Ray actors, ``evaluate.num_actors``) for every
setting, and prints, per setting, the means of pose IoU, torso / legs colour error and SSIM with the
95 % bootstrap interval of the pair-by-pair difference to DDIM-50, and the wall seconds per image.

    python benchmarks/bench_scheduler_quality.py [--params params.yaml] [--pairs 96] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from xmdpt.core.config import load_config
from xmdpt.metrics.stats import paired_comparison
from xmdpt.metrics.synthetic import foreground_mask, mask_iou, part_colour_error
from xmdpt.evaluation.scores import _eval_keypoints, compute_metrics, pixel_metrics
from xmdpt.evaluation.pairs import generate_pairs, load_test_pairs
from xmdpt.core.manifests import EvaluateManifest, ValidateManifest
from xmdpt.metrics.protocol import get_protocol

REFERENCE = ("ddim", 50)
CONVERGED = ("ddim", 250)  # near the sampler's ODE solution: shows how far DDIM-50 itself is from it
SETTINGS = [REFERENCE] + [(s, n) for s in ("dpmsolver++", "unipc", "ddim") for n in (10, 15, 20, 25)] + [CONVERGED]
MEASURES = (("pose_iou", True), ("colour_error_torso", False), ("colour_error_legs", False), ("ssim", True))


def per_row(cfg, pairs, images) -> dict[str, list]:
    """Per evaluated pair (rows in order): the measures of ``MEASURES`` as the evaluate stage computes them."""
    eval_hw = tuple(cfg.evaluate.eval_size)
    sigma = get_protocol(cfg.evaluate.protocol).ssim_256_sigma
    rows = sorted(images["gen"])
    out: dict[str, list] = {"row": rows, "pose_iou": [], "colour_error_torso": [], "colour_error_legs": [], "ssim": []}
    for r in rows:
        gen, gt = images["gen"][r], images["gt"][r]
        kps = _eval_keypoints(pairs[r], eval_hw)
        out["pose_iou"].append(mask_iou(foreground_mask(gen), foreground_mask(gt)))
        colour = part_colour_error(gen, kps, gt, kps)
        out["colour_error_torso"].append(colour.get("torso"))
        out["colour_error_legs"].append(colour.get("legs"))
        out["ssim"].append(pixel_metrics(gen, gt, sigma)["ssim"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--pairs", type=int, default=None, help="test pairs (default: evaluate.max_pairs)")
    parser.add_argument("--out", default=None, help="write the table and per-row values as JSON here")
    args = parser.parse_args()

    base = load_config(args.params)
    art = Path(base.paths.artifacts_dir)
    model_dir = EvaluateManifest.load(art).pipeline_local
    validate = ValidateManifest.load(art)
    n_pairs = args.pairs or base.evaluate.max_pairs
    base = replace(base, evaluate=replace(base.evaluate, unguided_pairs=0, max_pairs=n_pairs))
    pairs = load_test_pairs(validate, n_pairs, rule=get_protocol(base.evaluate.protocol).test_pairs,
                            seed=base.sample.seed)
    results = {}
    for scheduler, steps in SETTINGS:
        cfg = replace(base, sample=replace(base.sample, scheduler=scheduler, num_steps=steps))
        t0 = time.perf_counter()
        generated, quarantined = generate_pairs(cfg, model_dir, pairs)
        seconds = time.perf_counter() - t0
        _, images = compute_metrics(cfg, validate, pairs, generated, quarantined)
        results[f"{scheduler}-{steps}"] = {"scheduler": scheduler, "steps": steps, "seconds": seconds,
                                           "images": len(images["gen"]), **per_row(cfg, pairs, images)}
        print(f"{scheduler}-{steps}: {seconds:.1f} s for {len(images['gen'])} images", flush=True)

    if args.out:
        Path(args.out).write_text(json.dumps({"per_row": results}, indent=1) + "\n")
    table = {}
    for reference in (REFERENCE, CONVERGED):
        ref_key = f"{reference[0]}-{reference[1]}"
        ref = results[ref_key]
        print(f"\n{n_pairs} held-out pairs, guidance {base.sample.cfg_scale} in {base.sample.guidance_interval}, "
              f"{base.evaluate.num_actors} actors; model {model_dir}; differences to {ref_key.upper()}")
        print("| setting | wall s (incl. actor start) | " + " | ".join(f"{m} (diff [95% CI])" for m, _ in MEASURES) + " |")
        print("|---|---|" + "---|" * len(MEASURES))
        for key, res in results.items():
            if res["row"] != ref["row"]:
                raise RuntimeError(f"{key}: evaluated rows differ from {ref_key}'s (quarantine changed)")
            cells, row = [], table.setdefault(ref_key, {}).setdefault(key, {"seconds": res["seconds"]})
            for m, higher in MEASURES:
                if res is ref:
                    vals = [v for v in ref[m] if v is not None]
                    cells.append(f"{sum(vals) / len(vals):.3f}")
                    continue
                c = paired_comparison(res[m], ref[m], names=(key, ref_key), higher_is_better=higher)
                row[m] = c
                inside = "" if c["ci"][0] <= 0 <= c["ci"][1] else " *"
                cells.append(f"{c[f'mean_{key}']:.3f} ({c['diff']:+.3f} [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}]{inside})")
            print(f"| {key} | {res['seconds']:.1f} | " + " | ".join(cells) + " |")
        print("(* : the interval excludes 0)")
    if args.out:
        Path(args.out).write_text(json.dumps({"table": table, "per_row": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
