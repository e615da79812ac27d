"""``xmdpt generate-batch`` on Ray Data: a pairs table in, PNGs + Parquet manifest + quarantine out;
seeds per row (batch-invariant), resume after a killed run, S3 in and out (moto server on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xmdpt.sampling.batch import BatchError, generate_batch, read_pairs_table
from xmdpt.sampling.inputs import EXAMPLE_POSE

pytestmark = pytest.mark.slow  # Ray Data jobs and killed runs

BIN = Path(sys.executable).parent
POSE = EXAMPLE_POSE


def _inputs(d: Path, n_good: int = 6) -> Path:
    """A pairs CSV (relative paths) with good rows and one of each bad kind."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    (d / "pose.json").write_text(json.dumps(POSE))
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 255, (256, 176, 3), dtype=np.uint8)).save(d / f"p{i}.png")
        pose = "pose.json" if i % 2 == 0 else json.dumps(POSE)  # a file, or inline JSON
        rows.append({"id": f"good{i}", "source": f"p{i}.png", "pose": pose})
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rows.append({"id": "bad-missing", "source": "nope.png", "pose": "pose.json"})
    rows.append({"id": "bad-broken", "source": "broken.jpg", "pose": "pose.json"})
    rows.append({"id": "bad-pose", "source": "p0.png", "pose": json.dumps(dict(POSE, keypoints=POSE["keypoints"][:17]))})
    pd.DataFrame(rows).to_csv(d / "pairs.csv", index=False)
    return d / "pairs.csv"


def _manifest(out: Path) -> pd.DataFrame:
    return pd.concat([pq.read_table(p).to_pandas() for p in sorted((out / "manifest").glob("*.parquet"))])


def test_batch_job_counts_quarantine_and_resume(ray_local, folder, tmp_path):
    pairs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    s = generate_batch(str(folder), str(pairs), str(out), actors=2, batch_size=3, num_cpus_per_actor=0.5, steps=2,
                       progress=False, scheduler="unipc")
    assert s["rows"] == 9 and s["generated"] == 6 and s["quarantined"] == 3 and s["skipped"] == 0
    m = _manifest(out)
    assert sorted(m["id"]) == [f"good{i}" for i in range(6)] and m["id"].is_unique
    assert set(m.columns) >= {"id", "row", "source", "pose", "seed", "model_name", "model_version", "output"}
    assert (m["seed"] == m["row"]).all()  # --seed 0 + row number
    assert (m["scheduler"] == "unipc").all() and s["scheduler"] == "unipc"
    for _, r in m.iterrows():
        img = Image.open(r["output"])
        assert img.format == "PNG" and img.size == (11, 16)  # the source's 176:256 aspect
    q = pd.concat([pq.read_table(p).to_pandas() for p in (out / "quarantine").glob("*.parquet")]).set_index("id")
    assert "nope.png" in q.loc["bad-missing", "reason"] and "source" in q.loc["bad-missing", "reason"]
    assert "broken.jpg" in q.loc["bad-broken", "reason"]
    assert "expected 18 keypoints" in q.loc["bad-pose", "reason"] and "pose" in q.loc["bad-pose", "reason"]
    assert json.loads((out / "summary.json").read_text())["total_generated"] == 6

    again = generate_batch(str(folder), str(pairs), str(out), actors=1, batch_size=4, num_cpus_per_actor=0.5, steps=2,
                           progress=False)
    assert again["skipped"] == 9 and again["generated"] == again["quarantined"] == 0
    assert len(_manifest(out)) == 6  # nothing listed twice

    # the same rows in batches of another size (and one actor) give the same pixels: seeds are per row
    other = tmp_path / "out-b1"
    generate_batch(str(folder), str(pairs), str(other), actors=1, batch_size=1, num_cpus_per_actor=0.5, steps=2,
                   progress=False, scheduler="unipc")
    for i in range(6):
        a = np.asarray(Image.open(out / "images" / f"good{i}.png"))
        b = np.asarray(Image.open(other / "images" / f"good{i}.png"))
        assert np.array_equal(a, b), i


def test_pairs_table_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("src,pose\na.png,b.json\n")
    with pytest.raises(BatchError, match="bad.csv: the pairs table needs columns 'source' and 'pose'"):
        read_pairs_table(str(bad))
    dup = tmp_path / "dup.csv"
    dup.write_text("id,source,pose\nx,a.png,b.json\nx,c.png,b.json\n")
    with pytest.raises(BatchError, match="duplicate ids \\['x'\\]"):
        read_pairs_table(str(dup))
    with pytest.raises(BatchError, match="not found"):
        read_pairs_table(str(tmp_path / "missing.csv"))


def test_resume_after_a_killed_run(folder, tmp_path):
    """Kill the CLI job after its first manifest part; the rerun finishes, nothing duplicated."""
    pairs = _inputs(tmp_path / "in", n_good=8)
    out = tmp_path / "out"
    cmd = [str(BIN / "xmdpt"), "generate-batch", "--model", str(folder), "--pairs", str(pairs), "--out", str(out),
           "--batch-size", "1", "--steps", "20", "--num-cpus-per-actor", "0.5"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not list((out / "manifest").glob("*.parquet")):
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    first = len(_manifest(out)) if list((out / "manifest").glob("*.parquet")) else 0
    assert 1 <= first < 8, f"killed too late ({first} rows done): {proc.stdout.read().decode()[-2000:]}"

    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    m = _manifest(out)
    assert m["id"].is_unique and len(m) == 8 and s["total_generated"] == 8 and s["total_quarantined"] == 3
    assert s["rows"] == s["skipped"] + s["generated"] + s["quarantined"] == 11 and s["skipped"] >= first
    assert len(list((out / "images").glob("*.png"))) == 8


def test_s3_in_and_out(ray_local, folder, tmp_path, s3_endpoint):
    import s3fs

    local = _inputs(tmp_path / "in", n_good=3)
    fs = s3fs.S3FileSystem()
    bucket = "xmdpt-batch"
    fs.mkdir(bucket)
    fs.put(str(local.parent) + "/", f"{bucket}/in/", recursive=True)
    s = generate_batch(str(folder), f"s3://{bucket}/in/pairs.csv", f"s3://{bucket}/out", actors=1, batch_size=4,
                       num_cpus_per_actor=0.5, steps=2, progress=False)
    assert s["generated"] == 3 and s["quarantined"] == 3
    pngs = sorted(fs.glob(f"{bucket}/out/images/*.png"))
    assert len(pngs) == 3
    assert Image.open(io.BytesIO(fs.cat_file(pngs[0]))).size == (11, 16)
    parts = fs.glob(f"{bucket}/out/manifest/*.parquet")
    m = pd.concat([pq.read_table(io.BytesIO(fs.cat_file(p))).to_pandas() for p in parts])
    assert all(o.startswith(f"s3://{bucket}/out/images/") for o in m["output"])
    assert fs.isfile(f"{bucket}/out/summary.json")
