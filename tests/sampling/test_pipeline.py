"""XMDPTPipeline on a tiny pipeline folder: determinism, shapes, inputs from any photo, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tiny_pipeline_folder import build_tiny_pipeline_folder
from xmdpt.data.images import ImageError
from xmdpt.core.model_resolver import ModelNotFoundError
from xmdpt.sampling import PoseError, XMDPTPipeline
from xmdpt.core.pipeline_folder import check_pipeline_folder

POSE = {"format": "coco18", "image_size": [256, 176],
        "keypoints": [[88, 40], [88, 62], [68, 64], [60, 96], [58, 126], [108, 64], [116, 96], [118, 126],
                      [76, 132], [74, 182], [74, 228], [100, 132], [102, 182], [102, 228], [84, 36], [92, 36],
                      [-1, -1], [96, 38]]}


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    folder = build_tiny_pipeline_folder(tmp_path_factory.mktemp("tiny"))
    return XMDPTPipeline.from_pretrained(folder, device="cpu")


def test_folder_is_self_contained(pipe):
    meta = check_pipeline_folder(pipe.folder)
    assert meta["standin"] is True and set(meta["encoder_weights"]) == {"image", "pose"}
    assert pipe.image_encoder.standin and pipe.pose_encoder.num_tokens == 5
    assert meta["pose_model"] == "pose/pose_landmarker_full.task"  # the pose estimator travels with the model
    assert pipe.pose_model_path == str(pipe.folder / "pose" / "pose_landmarker_full.task")


def test_generate_is_seeded_and_any_aspect(pipe):
    rng = np.random.default_rng(0)
    wide = rng.integers(0, 255, (90, 200, 3), dtype=np.uint8)  # landscape photo: padded top/bottom
    a = pipe(wide, POSE, seed=1)
    b = pipe(Image.fromarray(wide), POSE, seed=1)
    c = pipe(wide, POSE, seed=2)
    assert len(a) == 1 and a[0].size == (11, 5)  # the landscape source's aspect (square 16 -> 11 x 16 -> crop)
    assert pipe(wide, POSE, seed=1, square=True)[0].size == (16, 16)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    out = pipe(wide, POSE, seed=1, num_images=2, output_size=(256, 176), cfg_scale=1.0)
    assert len(out) == 2 and out[0].size == (176, 256)
    assert not np.array_equal(np.asarray(out[0]), np.asarray(out[1]))  # different noise per image


def test_pipeline_errors(pipe, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageError, match="broken.png"):
        pipe(bad, POSE)
    wrong = dict(POSE, keypoints=POSE["keypoints"][:17])
    with pytest.raises(PoseError, match="expected 18 keypoints"):
        pipe(np.zeros((32, 32, 3), np.uint8), wrong)
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        XMDPTPipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError):
        XMDPTPipeline.from_pretrained(tmp_path / "empty")


def test_pose_json_file_and_generate_function(pipe, tmp_path):
    from xmdpt.sampling.pipeline import generate

    pose_file = tmp_path / "pose.json"
    pose_file.write_text(json.dumps(POSE))
    src = tmp_path / "src.jpg"
    Image.fromarray(np.full((256, 176, 3), 200, np.uint8)).save(src)
    out = generate(pipe.folder, src, pose_file, tmp_path / "out" / "gen.png", num_steps=2, seed=0, device="cpu")
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (11, 16)  # 176:256 like the source
    sq = generate(pipe.folder, src, pose_file, tmp_path / "sq.png", num_steps=2, seed=0, device="cpu", square=True)
    assert Image.open(sq).size == (16, 16)


def test_pose_from_a_photo(pipe, pose_task_path, tmp_path):
    """A photo as the target pose: the estimator finds the astronaut's upper body; a cat has no pose."""
    from skimage import data as skdata

    photo = tmp_path / "astronaut.png"
    Image.fromarray(skdata.astronaut()).save(photo)
    pose = pipe.load_pose(photo)  # the folder's own estimator
    assert pose.hw == (512, 512)
    assert (pose.keypoints[[0, 2, 5]] >= 0).all()  # nose and both shoulders found
    out = pipe(np.full((256, 176, 3), 230, np.uint8), pose, seed=0)
    assert out[0].size == (11, 16)
    with pytest.raises(PoseError, match="no person found"):
        pipe.load_pose(Image.fromarray(skdata.chelsea()), pose_model_path=str(pose_task_path))


def test_a_folder_without_a_pose_estimator_says_what_to_do(tmp_path, pose_task_path, monkeypatch):
    """Nothing resolves against the current directory: from a folder holding the checkout's relative
    pose-model path, a folder without an estimator still asks for --pose-model."""
    from skimage import data as skdata

    bare = XMDPTPipeline.from_pretrained(build_tiny_pipeline_folder(tmp_path / "bare", pose_model=None), device="cpu")
    assert check_pipeline_folder(bare.folder)["pose_model"] is None and bare.pose_model_path is None
    (tmp_path / "assets" / "models").mkdir(parents=True)
    (tmp_path / "assets" / "models" / "pose_landmarker_full.task").write_bytes(pose_task_path.read_bytes())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PoseError, match="carries none.*--pose-model"):
        bare.load_pose(Image.fromarray(skdata.astronaut()))
    assert bare.load_pose(Image.fromarray(skdata.astronaut()), pose_model_path=str(pose_task_path)).hw == (512, 512)


def test_guidance_interval_override(pipe):
    """The model's own interval is kept unless overridden; an empty interval is conditional sampling."""
    rng = np.random.default_rng(3)
    src = rng.integers(0, 255, (64, 44, 3), dtype=np.uint8)
    assert pipe.sample_config().guidance_interval == pipe.cfg.sample.guidance_interval
    assert pipe.sample_config(guidance_interval=(200, 700)).guidance_interval == (200, 700)
    assert pipe.sample_config(guidance_interval=None).guidance_interval is None
    cond_only = np.asarray(pipe(src, POSE, seed=4, num_steps=3, cfg_scale=1.0)[0])
    never = np.asarray(pipe(src, POSE, seed=4, num_steps=3, cfg_scale=3.0, guidance_interval=(1000, 1000))[0])
    always = np.asarray(pipe(src, POSE, seed=4, num_steps=3, cfg_scale=3.0, guidance_interval=None)[0])
    assert np.array_equal(cond_only, never)
    assert not np.array_equal(always, never)


def test_source_latent_sample_is_seeded_and_differs_from_the_mean(pipe):
    rng = np.random.default_rng(5)
    src = rng.integers(0, 255, (64, 44, 3), dtype=np.uint8)
    assert pipe.cfg.sample.source_latent == "mean"  # our own models keep their setting
    kw = dict(seed=3, num_steps=2, square=True)
    mean = np.asarray(pipe(src, POSE, **kw)[0])
    s1 = np.asarray(pipe(src, POSE, source_latent="sample", **kw)[0])
    s2 = np.asarray(pipe(src, POSE, source_latent="sample", **kw)[0])
    s3 = np.asarray(pipe(src, POSE, source_latent="sample", **{**kw, "seed": 4})[0])
    assert np.array_equal(s1, s2)  # reproducible
    assert not np.array_equal(s1, mean)
    assert not np.array_equal(s1, s3)
    # the posterior noise is its own stream: the conditions differ exactly by std * eps
    from xmdpt.sampling.inputs import Pose

    pose = pipe.load_pose(POSE)
    sq = np.stack([np.asarray(Image.fromarray(src).resize((16, 16)))])
    c_mean = pipe._encode(sq, [pose], pipe.sample_config(source_latent="mean"))
    c_smp = pipe._encode(sq, [pose], pipe.sample_config(source_latent="sample", seed=3))
    assert isinstance(pose, Pose)
    assert not torch.equal(c_mean["ref_latent"], c_smp["ref_latent"])
    assert torch.equal(c_mean["ref_tokens"], c_smp["ref_tokens"])


def test_bad_sample_settings_are_refused(pipe):
    from xmdpt.core.config import ConfigError

    with pytest.raises(ConfigError, match="sample.source_latent"):
        pipe.sample_config(source_latent="median")
    with pytest.raises(ConfigError, match="sample.precision"):
        pipe.sample_config(precision="fp8")
