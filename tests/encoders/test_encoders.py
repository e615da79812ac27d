"""Encoders at tiny size: input preparation, DINOv2 stand-ins and the real ids, the latent codec."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xmdpt.core.config import AutoencoderConfig, EncodersConfig
from xmdpt.data import schema
from xmdpt.encoders.dino import TokenEncoder, prepare_image, prepare_pose, token_spec
from xmdpt.training.autoencoder import reconstruction_metrics
from xmdpt.encoders.vae import LatentCodec, build_fitted_vae

TINY = EncodersConfig(pretrained=False, standin_depth=1, token_input_size=28)
TINY_AE = AutoencoderConfig(vae="fitted", block_channels=(8, 16))


def test_prepare_image_is_bicubic_without_antialias_and_keeps_range():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    y = prepare_image(x, 42)
    assert y.shape == (2, 3, 42, 42)
    ref = F.interpolate(x, size=(42, 42), mode="bicubic", align_corners=False, antialias=False)
    aa = F.interpolate(x, size=(42, 42), mode="bicubic", align_corners=False, antialias=True)
    assert torch.equal(y, ref) and not torch.allclose(y, aa, atol=1e-3)
    assert y.min() < -0.8 and y.max() > 0.8  # no ImageNet normalisation: still about [-1, 1]
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        prepare_image(torch.zeros(3, 8, 8), 28)


def test_prepare_pose_divides_by_its_own_max():
    sk = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    sk[0, 0, 4:8, 4:8] = 153  # the authors' alpha-blended limbs never reach 255
    y = prepare_pose(sk, 16)
    assert y[0].max() == 1.0 and y[0].min() == 0.0
    assert torch.count_nonzero(y[1]) == 0  # an empty skeleton stays empty (no division by zero)


def test_standin_tokens_shape_spec_and_labels():
    enc = TokenEncoder.from_config(TINY, "image")
    tokens = enc(prepare_image(torch.rand(3, 3, 32, 32) * 2 - 1, 28))
    assert tokens.shape == (3, 1 + (28 // 14) ** 2, 384) == (3, enc.num_tokens, enc.dim)
    assert torch.isfinite(tokens).all()
    spec = enc.spec
    assert spec["standin"] is True and spec["seed"] == TINY.standin_seed and spec["label"] == "random-feature stand-in"
    assert spec == {**token_spec(TINY, "image")}
    pose = TokenEncoder.from_config(TINY, "pose")
    assert pose.fingerprint() != enc.fingerprint()  # same architecture, different role seeds
    with pytest.raises(ValueError, match="expected one of"):
        TokenEncoder.from_config(TINY, "depth")


@pytest.mark.slow  # subprocesses
def test_standin_weights_are_reproducible_across_processes_and_roundtrip(tmp_path):
    enc = TokenEncoder.from_config(TINY, "pose")
    code = ("from xmdpt.core.config import EncodersConfig; from xmdpt.encoders.dino import TokenEncoder; "
            "print(TokenEncoder.from_config(EncodersConfig(pretrained=False, standin_depth=1, "
            "token_input_size=28), 'pose').fingerprint())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == enc.fingerprint()

    uri = enc.save(str(tmp_path / "enc" / "pose.safetensors"))
    with open(uri, "rb") as f:
        assert not f.read(2).startswith(b"PK")  # safetensors, not a zip/pickle checkpoint
    loaded = TokenEncoder.from_weights(TINY.__class__(**{**TINY.__dict__, "standin_seed": 7}), "pose", uri)
    x = prepare_pose(torch.randint(0, 255, (2, 3, 28, 28), dtype=torch.uint8), 28)
    assert torch.equal(loaded(x), enc(x))  # the file, not the seed, decides the weights


def test_paper_encoders_ids_and_shapes_on_meta_device():
    paper = EncodersConfig(pretrained=True, token_input_size=224)
    image, pose = token_spec(paper, "image"), token_spec(paper, "pose")
    assert image["id"] == "vit_giant_patch14_dinov2.lvd142m" and (image["num_tokens"], image["dim"]) == (257, 1536)
    assert pose["id"] == "vit_base_patch14_dinov2.lvd142m" and (pose["num_tokens"], pose["dim"]) == (257, 768)
    assert not image["standin"] and not pose["standin"]
    import timm

    with torch.device("meta"):
        g = timm.create_model("vit_giant_patch14_dinov2.lvd142m", pretrained=False, img_size=224, num_classes=0)
        tokens = g.forward_features(torch.empty(1, 3, 224, 224))
    assert tokens.shape == (1, 257, 1536) and g.num_prefix_tokens == 1 and not getattr(g, "num_reg_tokens", 0)


@pytest.mark.timeout(90)
@pytest.mark.slow  # subprocesses
def test_pretrained_encoders_fail_fast_offline_naming_the_model():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": "/nonexistent-hf-home"}
    code = ("import time; t = time.time()\n"
            "from xmdpt.core.config import EncodersConfig\n"
            "from xmdpt.encoders.dino import TokenEncoder\n"
            "from xmdpt.encoders.vae import load_pretrained_vae\n"
            "for fn in (lambda: TokenEncoder.from_config(EncodersConfig(pretrained=True, token_input_size=224), 'pose'),\n"
            "           lambda: load_pretrained_vae('stabilityai/sd-vae-ft-mse')):\n"
            "    try:\n        fn()\n    except RuntimeError as e:\n        print('ERR', e)\n"
            "    else:\n        print('LOADED')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=80, env=env)
    lines = [line for line in out.stdout.splitlines() if line.startswith(("ERR", "LOADED"))]
    assert len(lines) == 2, out.stdout + out.stderr
    assert "vit_base_patch14_dinov2.lvd142m" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert "stabilityai/sd-vae-ft-mse" in lines[1] and "autoencoder.vae=fitted" in lines[1]


def test_latent_codec_shapes_and_safetensors_roundtrip(tmp_path):
    torch.manual_seed(0)
    codec = LatentCodec(build_fitted_vae(TINY_AE, 32), latent_scale=0.5, source="fitted")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, std = codec.encode(x)
    assert mean.shape == std.shape == (2, TINY_AE.latent_channels, 16, 16) and (std > 0).all()
    rec = codec.decode(mean)
    assert rec.shape == x.shape and rec.abs().max() <= 1
    uri = codec.save(str(tmp_path / "ae"))
    files = {p.name for p in (tmp_path / "ae" / "vae").iterdir()}
    assert "diffusion_pytorch_model.safetensors" in files and not any(f.endswith((".bin", ".pt")) for f in files)
    again = LatentCodec.from_folder(uri)
    assert again.latent_scale == 0.5 and again.source == "fitted"
    assert torch.equal(again.encode(x)[0], mean) and torch.equal(again.decode(mean), rec)
    with pytest.raises(ValueError, match="not divisible"):
        codec.encode(torch.zeros(1, 3, 31, 31))
    with pytest.raises(ValueError, match="downsampling factor"):
        build_fitted_vae(AutoencoderConfig(vae="fitted", block_channels=(8, 8, 8, 8)), 36)


def test_reconstruction_metrics_identity_and_noise():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    same = reconstruction_metrics(a, a)
    assert same["psnr"] == 100.0 and same["ssim"] == pytest.approx(1.0)
    noisy = np.clip(a.astype(int) + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    m = reconstruction_metrics(a, noisy)
    assert 25 < m["psnr"] < 40 and m["ssim"] < 1


def test_flip_augmentation_swaps_left_and_right_before_rendering():
    from xmdpt.encoders.encoding import augment

    img = np.zeros((40, 28, 3), np.uint8)
    img[:, :7] = 255  # a white band on the left
    kps = np.full((schema.NUM_KEYPOINTS, 2), -1.0, np.float32)
    kps[2] = (6.0, 10.0)  # r_shoulder on the left of the image
    kps[5] = (20.0, 10.0)  # l_shoulder on the right
    im0, k0, sk0 = augment(img, kps, 32, flip=False)
    im1, k1, sk1 = augment(img, kps, 32, flip=True)
    assert im0.shape == im1.shape == sk0.shape == (32, 32, 3)
    assert np.array_equal(im1, im0[:, ::-1])
    r, l = schema.KEYPOINT_NAMES.index("r_shoulder"), schema.KEYPOINT_NAMES.index("l_shoulder")
    assert k1[l, 0] == pytest.approx(31 - k0[r, 0]) and k1[r, 0] == pytest.approx(31 - k0[l, 0])
    assert (k1[0] == -1).all()
    # colours follow the body side: the mirrored skeleton is NOT the flipped skeleton image
    assert sk1.any() and not np.array_equal(sk1, sk0[:, ::-1])


def test_standardize_latent_channels_is_exact_and_whitens_each_channel():
    """Folding per-channel mean/std into the 1x1 convs changes the latent coordinates only:
    reconstructions stay the same, each channel's posterior samples become mean 0 / std 1."""
    from xmdpt.training.autoencoder import standardize_latent_channels
    from xmdpt.encoders.vae import from_uint8

    torch.manual_seed(0)
    vae = build_fitted_vae(AutoencoderConfig(vae="fitted", block_channels=(8, 16)), image_size=32).eval()
    with torch.no_grad():  # a fitted-like posterior: small std, channel means far from 0 and unequal spreads
        vae.quant_conv.bias[4:] = -6.0
        vae.quant_conv.bias[:4] += torch.tensor([2.0, -1.0, 0.5, -3.0])
        vae.quant_conv.weight[:4] *= torch.tensor([3.0, 0.5, 1.0, 2.0]).view(4, 1, 1, 1)
    images = np.random.default_rng(0).integers(0, 256, (24, 32, 32, 3), dtype=np.uint8)
    codec = LatentCodec(vae, 1.0, source="fitted")
    mean0, std0 = codec.encode(from_uint8(images))
    recon0 = codec.decode(mean0)
    assert mean0.mean(dim=(0, 2, 3)).abs().max() > 0.5  # not already standardised

    stats = standardize_latent_channels(vae, images)
    mean1, std1 = codec.encode(from_uint8(images))
    torch.testing.assert_close(codec.decode(mean1), recon0, atol=1e-4, rtol=0)
    sd = torch.tensor(stats["std"]).view(1, 4, 1, 1)
    torch.testing.assert_close(mean1 * sd + torch.tensor(stats["mean"]).view(1, 4, 1, 1), mean0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(std1 * sd, std0, atol=1e-5, rtol=1e-4)
    sample = mean1 + std1 * torch.randn(mean1.shape, generator=torch.Generator().manual_seed(0))
    assert sample.mean(dim=(0, 2, 3)).abs().max() < 0.05
    assert (sample.std(dim=(0, 2, 3)) - 1).abs().max() < 0.05


def test_standin_positions_and_standardised_tokens_roundtrip(tmp_path):
    """sin-cos positions make the same patch content give different tokens at different positions;
    fitted statistics standardise the tokens (mean 0, std 1 on the fitting set), survive save/load
    and change the fingerprint."""
    flat = torch.full((1, 3, 28, 28), 0.5)  # every patch the same content
    enc = TokenEncoder.from_config(TINY, "pose")
    raw = enc(flat)[0, 1:]  # (4, D) patch tokens
    assert (raw[0] - raw[1]).abs().max() > 0.1  # position shows
    rnd = TokenEncoder.from_config(EncodersConfig(pretrained=False, standin_depth=1, token_input_size=28,
                                                  standin_pos_embed="random"), "pose")(flat)[0, 1:]
    assert (rnd[0] - rnd[1]).abs().max() < (raw[0] - raw[1]).abs().max() / 4  # timm's init: almost none

    g = torch.Generator().manual_seed(0)
    fit = torch.rand(64, 3, 28, 28, generator=g)
    before = enc.fingerprint()
    enc.fit_standardization(enc.raw_tokens(fit))
    assert enc.spec["standardized"] and enc.fingerprint() != before
    std = enc(fit)
    torch.testing.assert_close(std.mean(0), torch.zeros_like(std[0]), atol=1e-4, rtol=0)
    assert abs(float(std.std(0).median()) - 1.0) < 1e-3
    enc.save(str(tmp_path / "pose.safetensors"))
    back = TokenEncoder.from_weights(TINY, "pose", str(tmp_path / "pose.safetensors"))
    torch.testing.assert_close(back(fit[:4]), enc(fit[:4]), rtol=0, atol=0)
    assert back.fingerprint() == enc.fingerprint()
    with pytest.raises(ValueError, match="token statistics of shape"):
        enc.set_standardization(torch.zeros(3, 3), torch.ones(3, 3))
