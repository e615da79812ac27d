"""evaluate.protocol pins each rule of the peers' metric code on tiny inputs (values from their
formulas written out here; the peer file is named in each test)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from xmdpt.evaluation.fid_lpips import fid_real_paths
from xmdpt.evaluation.scores import dataset_image_for_eval, generated_for_eval, pixel_metrics
from xmdpt.evaluation.pairs import one_per_target
from xmdpt.metrics.image import ssim_256
from xmdpt.metrics.protocol import PROTOCOLS, get_protocol

from tiny_config import tiny_config


def _pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, 256, (64, 44, 3), dtype=np.uint8)
    pred = np.clip(gt.astype(int) // 3 + 80 + rng.integers(-40, 41, gt.shape), 60, 180).astype(np.uint8)
    return pred, gt


@pytest.mark.parametrize("protocol, sigma", [("pidm", 1.2), ("cfld", 1.5)])
def test_ssim_256(protocol, sigma):
    # PIDM utils/metrics.py and CFLD models/metrics.py: compare_ssim(..., gaussian_weights=True, sigma=σ,
    # use_sample_covariance=False, multichannel=True, data_range=img_gen.max() - img_gen.min()) on 0-255 images
    pred, gt = _pair()
    want = structural_similarity(pred.astype(np.float64), gt.astype(np.float64), gaussian_weights=True, sigma=sigma,
                                 use_sample_covariance=False, channel_axis=2,
                                 data_range=float(pred.max()) - float(pred.min()))
    p = get_protocol(protocol)
    assert p.ssim_256_sigma == sigma
    assert ssim_256(pred, gt, sigma=p.ssim_256_sigma) == pytest.approx(want, abs=1e-12)
    assert pixel_metrics(pred, gt, p.ssim_256_sigma)["ssim_256"] == pytest.approx(want, abs=1e-12)
    # not the fixed data range of before
    fixed = structural_similarity(pred / 255.0, gt / 255.0, gaussian_weights=True, sigma=sigma,
                                  use_sample_covariance=False, channel_axis=2, data_range=1.0)
    assert abs(want - fixed) > 1e-4


def test_resize_paths():
    rng = np.random.default_rng(1)
    square = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    # PIDM utils/metrics.py: cv2.resize(img, (176, 256)) (default INTER_LINEAR) of the 256x256 output
    assert np.array_equal(generated_for_eval(square, (256, 176), "pidm"), cv2.resize(square, (176, 256)))
    # CFLD: bicubic with antialiasing, uint8
    want = np.asarray(Image.fromarray(square).resize((176, 256), Image.BICUBIC))
    assert np.array_equal(generated_for_eval(square, (256, 176), "cfld"), want)
    # PIDM ground truth: the LMDB's PIL-bicubic 256x256 PNG (data/prepare_data.py), then cv2 to 176x256
    photo = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    lmdb = np.asarray(Image.fromarray(photo).resize((256, 256), Image.BICUBIC))
    assert np.array_equal(dataset_image_for_eval(photo, (256, 176), "pidm"), cv2.resize(lmdb, (176, 256)))


def test_one_pair_per_test_line():
    # PIDM: each test_pairs.txt line is a target and its candidate sources; one source is drawn per line
    rows = [{"pair_id": f"{t}<-{s}", "target_path": t, "source_path": s}
            for t in ("a", "b") for s in ("x", "y", "z")]
    picked = one_per_target(rows, seed=0)
    assert [r["target_path"] for r in picked] == ["a", "b"]
    assert picked == one_per_target(rows, seed=0)  # seeded
    assert {tuple(r["source_path"] for r in one_per_target(rows, seed=s)) for s in range(20)} != {("x", "x")}
    assert PROTOCOLS["pidm"].test_pairs == "one_per_target" and PROTOCOLS["cfld"].test_pairs == "every_row"


def test_fid_real_set_is_all_of_train_lst(tmp_path):
    # PIDM issue #37: the real set is every train.lst image (48,674), not only those in train pairs (37,016)
    names = [f"fashionMENDenimid{i:08d}01_1front.jpg" for i in range(5)]
    (tmp_path / "train.lst").write_text("\n".join(names) + "\n")
    (tmp_path / "test.lst").write_text("fashionWOMENDressesid0000009901_1front.jpg\n")
    cfg = tiny_config(paths={"dataset_root": str(tmp_path)})
    paths, source = fid_real_paths(cfg, validate_manifest={})
    assert len(paths) == 5 and all(p.startswith("img/MEN/Denim/id_") for p in paths)
    assert source == "train.lst (5 images)"
