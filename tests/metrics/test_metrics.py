"""Metric functions on crafted inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xmdpt.metrics.fid import InceptionFeatures, fid_from_features, frechet_distance, gaussian_stats
from xmdpt.metrics.image import psnr, resize_for_eval, ssim, ssim_256
from xmdpt.metrics.lpips import LPIPS
from xmdpt.metrics.synthetic import (
    foreground_mask,
    mask_iou,
    part_colour_error,
    part_masks,
    pose_match,
    silhouette_iou,
    view_consistency,
)

BG = np.array([235, 232, 228], dtype=np.uint8)


def _figure(shift_x: int = 0, torso=(200, 30, 30), legs=(30, 30, 200), hw=(256, 176)) -> tuple[np.ndarray, np.ndarray]:
    """A stick person on a light background and its COCO-18 keypoints."""
    h, w = hw
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BG
    kps = -np.ones((18, 2))
    cx = 88 + shift_x
    kps[1] = (cx, 60)
    kps[2], kps[5] = (cx - 25, 62), (cx + 25, 62)
    kps[8], kps[11] = (cx - 15, 140), (cx + 15, 140)
    kps[9], kps[12] = (cx - 17, 190), (cx + 17, 190)
    kps[10], kps[13] = (cx - 18, 240), (cx + 18, 240)
    img[62:140, cx - 25:cx + 25] = torso
    img[140:241, cx - 22:cx - 10] = legs
    img[140:241, cx + 10:cx + 22] = legs
    return img, kps


def test_ssim_psnr_sanity():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (256, 176, 3))
    noisy = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
    noisier = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim_256(a, a) == pytest.approx(1.0)
    assert 1.0 > ssim(a, noisy) > ssim(a, noisier)
    assert 1.0 > ssim_256(a, noisy) > ssim_256(a, noisier)
    assert psnr(a, a) == float("inf")
    # PSNR of a constant offset d is -10 log10(d^2)
    b = np.full((32, 32, 3), 0.5)
    assert psnr(b, b + 0.1) == pytest.approx(20.0, abs=1e-6)
    assert psnr(a, noisy) > psnr(a, noisier)
    with pytest.raises(ValueError, match="differ in shape"):
        ssim(a, a[:100])


def test_resize_for_eval_unsquashes():
    sq = np.zeros((64, 64, 3), np.uint8)
    out = resize_for_eval(sq)
    assert out.shape == (256, 176, 3) and out.dtype == np.uint8


def test_frechet_distance_analytic():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 8))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-8)
    # shifted Gaussians with equal covariance: FID = |mu1 - mu2|^2
    mu, shift = np.zeros(4), np.array([1.0, 2.0, 0.0, -2.0])
    cov = np.diag([1.0, 2.0, 3.0, 4.0])
    assert frechet_distance(mu, cov, mu + shift, cov) == pytest.approx(9.0, abs=1e-9)
    # diagonal covariances: sum (sqrt(s1) - sqrt(s2))^2
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    assert frechet_distance(np.zeros(3), np.diag(s1), np.zeros(3), np.diag(s2)) == pytest.approx(2.0, abs=1e-9)
    # sample-based estimate converges to the analytic value
    x = rng.normal(size=(20000, 2))
    y = rng.normal(size=(20000, 2)) * 2.0 + np.array([3.0, 0.0])
    assert fid_from_features(x, y) == pytest.approx(9.0 + 2 * (1 - 2) ** 2, rel=0.05)
    m, c = gaussian_stats(x)
    assert m.shape == (2,) and c.shape == (2, 2)
    with pytest.raises(ValueError, match="shape mismatch"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_lpips_properties_and_file_loading(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import alexnet

    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in alexnet(weights=None).state_dict().items()}
    backbone = {k: torch.randn(s, generator=g) * 0.05 for k, s in shapes.items() if k.startswith("features.")}
    torch.save(backbone, tmp_path / "alexnet.pth")  # torchvision key layout (classifier left out)
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 192, 384, 256, 256))}
    save_file(heads, str(tmp_path / "lpips_alex.safetensors"))
    m = LPIPS.from_files(tmp_path / "alexnet.pth", tmp_path / "lpips_alex.safetensors")
    assert torch.equal(m.lins[2].weight, heads["lin2.model.1.weight"])
    assert torch.equal(m.features[10].weight, backbone["features.10.weight"])
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = torch.rand(2, 3, 64, 64) * 2 - 1
    dxx, dxy, dyx = m(x, x), m(x, y), m(y, x)
    assert torch.allclose(dxx, torch.zeros(2), atol=1e-6)
    assert (dxy > 0).all() and torch.allclose(dxy, dyx, atol=1e-6)
    # closer images are closer in LPIPS
    assert (m(x, x + 0.05 * (y - x)) < dxy).all()
    a = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    assert m.distance_uint8(a, a) == pytest.approx(np.zeros(3), abs=1e-6)
    with pytest.raises(ValueError, match="evaluate.lpips_weights"):
        save_file({"foo": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
        LPIPS.from_files(tmp_path / "alexnet.pth", tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError, match="evaluate.alexnet_weights"):
        LPIPS.from_files(tmp_path / "missing.pth", tmp_path / "lpips_alex.safetensors")


def test_inception_rejects_wrong_weights(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "not_inception.pth")
    with pytest.raises(ValueError, match="evaluate.inception_weights"):
        InceptionFeatures(tmp_path / "not_inception.pth")


def test_inception_features_from_state_dict(tmp_path):
    from torchvision.models import inception_v3

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict().items()}
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.ones(s) if k.endswith("running_var") else torch.zeros(s, dtype=torch.long) if k.endswith("num_batches_tracked")
              else torch.randn(s, generator=g) * 0.05) for k, s in shapes.items()}
    torch.save(sd, tmp_path / "inc.pth")
    ext = InceptionFeatures(tmp_path / "inc.pth", batch_size=1)
    assert torch.equal(ext.net.Conv2d_1a_3x3.conv.weight, sd["Conv2d_1a_3x3.conv.weight"])
    imgs = np.random.default_rng(0).integers(0, 255, (1, 64, 44, 3), dtype=np.uint8)
    f = ext(imgs)
    assert f.shape == (1, 2048) and np.isfinite(f).all() and f.std() > 0


def test_foreground_and_iou():
    img, _ = _figure()
    m = foreground_mask(img)
    assert m.sum() == 78 * 50 + 2 * 101 * 12
    assert mask_iou(m, m) == 1.0
    assert mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    shifted, _ = _figure(shift_x=30)
    assert 0.0 < silhouette_iou(img, shifted) < 0.7
    far, _ = _figure(shift_x=70)
    assert silhouette_iou(img, far) == 0.0


def test_pose_match_rewards_the_target_pose_not_an_average_body():
    poses = [foreground_mask(_figure(shift_x=dx)[0]) for dx in (-40, -20, 0, 20, 40)]  # one person, five poses
    target, others = poses[2], [poses[0], poses[1], poses[3], poses[4]]
    assert pose_match(target, target, others) == 1.0  # the target pose itself
    # another pose (as copying the source would): closer to itself and its neighbour than to the target
    assert pose_match(poses[0], target, [poses[0], poses[1]]) == 0.0
    # a wide average body overlapping every pose: higher silhouette IoU with the target than another
    # real pose has, but no better with the target than with the poses on either side of it
    img = _figure()[0]
    img[62:241, 88 - 45:88 + 45] = (120, 60, 90)
    blob = foreground_mask(img)
    assert mask_iou(blob, target) > 0.35 > mask_iou(poses[0], target)
    assert pose_match(blob, target, [poses[1], poses[3]]) == 0.5  # ties count half
    assert pose_match(target, target, []) is None


def test_part_colour_error():
    img, kps = _figure()
    assert part_colour_error(img, kps, img, kps) == {"torso": 0.0, "legs": pytest.approx(0.0)}
    other, kps2 = _figure(shift_x=10, torso=(30, 200, 30))
    err = part_colour_error(other, kps2, img, kps)
    assert err["torso"] == pytest.approx(np.linalg.norm([170 / 255, 170 / 255, 0]), abs=0.02)
    masks = part_masks(kps, img.shape[:2])
    assert masks["torso"].sum() > 0 and masks["legs"].sum() > 0
    missing = kps.copy()
    missing[R_HIP_IDX] = -1
    assert part_masks(missing, img.shape[:2])["torso"] is None
    with pytest.raises(ValueError, match="18 keypoints"):
        part_masks(np.zeros((17, 2)), (10, 10))


R_HIP_IDX = 8


def test_view_consistency():
    img, _ = _figure()
    same = view_consistency([img, img, img])
    assert same == {"pixel_l1": 0.0, "iou": 1.0}
    shifted, _ = _figure(shift_x=20)
    diff = view_consistency([img, shifted])
    assert diff["pixel_l1"] > 0 and diff["iou"] < 1
    with pytest.raises(ValueError):
        view_consistency([img])


def test_foreground_mask_matches_synthetic_silhouettes():
    """On the synthetic benchmark the colour-threshold mask recovers the renderer's silhouette."""
    from xmdpt.synth import render_identity_views

    ious = []
    for seed, (gender, cat) in enumerate((("MEN", "Denim"), ("WOMEN", "Dresses"), ("MEN", "Shorts"))):
        for v in render_identity_views(seed, gender, cat, views=("1_front", "2_side")):
            ious.append(mask_iou(foreground_mask(v.image), v.mask > 0.5))
    assert np.mean(ious) > 0.85, ious
    # the other-identity baseline is a real gap: another person's colours differ, the same person's do not
    a = render_identity_views(0, "MEN", "Denim", views=("1_front",))[0]
    b = render_identity_views(1, "WOMEN", "Dresses", views=("1_front",))[0]
    assert part_colour_error(a.image, a.keypoints, a.image, a.keypoints)["torso"] == 0.0
    assert part_colour_error(b.image, b.keypoints, a.image, a.keypoints)["torso"] > 0.1


def test_other_identity_baseline_skips_a_person_whose_view_hides_the_part():
    """The next person's ground truth is a side view whose far shoulder is occluded (no torso region):
    the torso baseline comes from the person after, instead of dropping the pair."""
    from xmdpt.evaluation.scores import synthetic_metrics

    hw = (64, 48)

    def kps(side: bool) -> np.ndarray:
        k = np.full((18, 2), -1.0)
        x0, x1 = 14, 34
        k[2], k[5], k[8], k[11] = (x0, 16), (x1, 16), (x0, 40), (x1, 40)  # shoulders, hips
        k[9], k[12], k[10], k[13] = (x0, 50), (x1, 50), (x0, 60), (x1, 60)  # knees, ankles
        if side:
            k[5] = -1  # the far shoulder is not visible
        return k

    def person(rgb) -> np.ndarray:
        img = np.full(hw + (3,), 240, dtype=np.uint8)
        img[10:62, 12:37] = rgb
        return img

    colours = {0: (200, 40, 40), 1: (40, 200, 40), 2: (40, 40, 200)}
    pairs = [{"person_id": f"p{i}", "keypoints": kps(side=(i == 1)), "height": hw[0], "width": hw[1],
              "source_path": f"s{i}", "target_path": f"t{i}"} for i in range(3)]
    gts = {i: person(colours[i]) for i in range(3)}
    gens = {i: person(colours[i]) for i in range(3)}  # a perfect model
    out = synthetic_metrics(pairs, gens, gts, dict(gts), hw)
    torso = out["comparisons"]["colour_error_torso_model_vs_other_identity"]
    # rows 0 and 2 show a torso; row 0's next person (row 1) does not, so row 2 serves as its baseline
    assert torso["n"] == 2 and torso["mean_model"] == pytest.approx(0.0, abs=1e-6)
    red, blue = np.array(colours[0]) / 255.0, np.array(colours[2]) / 255.0
    assert out["synthetic_colour_error_torso_other_identity_baseline"] == pytest.approx(np.linalg.norm(red - blue), rel=1e-3)
    assert out["synthetic_colour_error_torso"] == pytest.approx(0.0, abs=1e-6)
    # without source keypoints there is no same-person floor
    assert out["synthetic_colour_error_torso_same_person_floor"] is None


def test_same_person_floor_is_the_source_photos_own_region_against_the_ground_truth():
    """The floor reads the source's torso where the source's keypoints put it: a source in another pose
    but the same clothes scores ~0; the gap closed is 1 for a model that copies the clothes exactly
    and 0 for one that shows another person's."""
    from xmdpt.evaluation.scores import synthetic_metrics

    hw = (64, 48)

    def kps(dx: int) -> np.ndarray:
        k = np.full((18, 2), -1.0)
        k[2], k[5], k[8], k[11] = (10 + dx, 16), (26 + dx, 16), (10 + dx, 40), (26 + dx, 40)
        k[9], k[12], k[10], k[13] = (10 + dx, 50), (26 + dx, 50), (10 + dx, 60), (26 + dx, 60)
        return k

    def person(rgb, legs, dx: int) -> np.ndarray:
        img = np.full(hw + (3,), 240, dtype=np.uint8)
        img[14:42, 8 + dx:29 + dx] = rgb
        img[40:63, 8 + dx:29 + dx] = legs
        return img

    colours = [((200, 40, 40), (20, 20, 90)), ((40, 200, 40), (90, 20, 20)), ((40, 40, 200), (20, 90, 20))]
    pairs = [{"person_id": f"p{i}", "keypoints": kps(12), "height": hw[0], "width": hw[1],
              "source_keypoints": kps(0), "source_height": hw[0], "source_width": hw[1],
              "source_path": f"s{i}", "target_path": f"t{i}"} for i in range(3)]
    gts = {i: person(*colours[i], 12) for i in range(3)}
    srcs = {i: person(*colours[i], 0) for i in range(3)}  # the same person, body elsewhere in the frame
    exact = synthetic_metrics(pairs, dict(gts), gts, srcs, hw)
    for part in ("torso", "legs"):
        assert exact[f"synthetic_colour_error_{part}_same_person_floor"] == pytest.approx(0.0, abs=1e-6)
        assert exact[f"synthetic_colour_gap_closed_{part}"] == pytest.approx(1.0)
    wrong = synthetic_metrics(pairs, {i: gts[(i + 1) % 3] for i in range(3)}, gts, srcs, hw)
    assert wrong["synthetic_colour_gap_closed_torso"] == pytest.approx(0.0, abs=1e-6)
    assert wrong["comparisons"]["colour_error_torso_model_vs_same_person_floor"]["better"] == "same_person_floor"


def test_limb_capsule_matches_the_distance_to_the_segment_everywhere():
    from xmdpt.metrics.synthetic import _capsule

    rng = np.random.default_rng(0)
    hw = (40, 30)
    yy, xx = np.mgrid[0:hw[0], 0:hw[1]]
    pts = np.stack([xx + 0.5, yy + 0.5], axis=-1).reshape(-1, 2)
    for _ in range(50):  # segments inside, across and outside the frame, and single points
        p = rng.uniform(-15, 50, 2)
        q = p if rng.random() < 0.2 else p + rng.normal(0, 15, 2)
        r = float(rng.uniform(0.5, 8))
        d = q - p
        t = np.clip((pts - p) @ d / max(float(d @ d), 1e-9), 0, 1)
        want = (np.linalg.norm(pts - (p + t[:, None] * d), axis=1) <= r).reshape(hw)
        assert np.array_equal(_capsule(hw, p, q, r), want)


def test_inception_input_is_the_peers_normalisation():
    """PIDM utils/inception.py and CFLD models/metrics.py: x in [0, 1], bilinear to 299 (align_corners
    False), then torchvision's transform_input affine per channel on that tensor:
    x_c * (std_c / 0.5) + (mean_c - 0.5) / 0.5 with the ImageNet mean/std."""
    img = np.zeros((1, 2, 2, 3), np.uint8)
    img[0, :, :, 0], img[0, :, :, 1], img[0, :, :, 2] = 255, 0, 51  # constant channels survive the resize
    x = InceptionFeatures.prepare(img)
    assert x.shape == (1, 3, 299, 299)
    expected = [1.0 * (0.229 / 0.5) + (0.485 - 0.5) / 0.5, 0.0 * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                0.2 * (0.225 / 0.5) + (0.406 - 0.5) / 0.5]
    for c in range(3):
        assert torch.allclose(x[0, c], torch.full((299, 299), expected[c]), atol=1e-6), c
    assert not torch.allclose(x[0, 0], torch.full((299, 299), 1.0))  # not 2x - 1
