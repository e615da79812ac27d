"""The authors' released checkpoints as a model source, end to end and offline.

Random-init stand-ins in the release's real layouts (tests/sampling/official_fixtures.py) go through
``xmdpt import-official`` (with ``--register``) and ``xmdpt generate --model models:/NAME@ALIAS``
from a real photo and a pose taken from another photo — with a local SQLite registry and with a
real ``mlflow server`` on 127.0.0.1 — plus the errors a user meets before any compute.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata
from typer.testing import CliRunner

import official_fixtures as release

from xmdpt.cli import app

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("release")
    out = release.write_release(root)
    out["overrides"] = release.overrides_file(root)
    # a real photo in DeepFashion's 176:256 portrait aspect, and another real photo to take the pose from
    Image.fromarray(skdata.astronaut()[:, 80:432]).save(root / "person.png")  # 352 x 512 (W x H)
    Image.fromarray(np.stack([skdata.camera()] * 3, axis=-1)).save(root / "pose_photo.png")  # the cameraman
    out["person"], out["pose_photo"] = root / "person.png", root / "pose_photo.png"
    return out


def _import_args(files, out: Path, *extra: str) -> list[str]:
    return ["import-official", str(files["ckpt"]), "--preset", release.PRESET, "--out", str(out),
            "--overrides", str(files["overrides"]), "--vae", str(files["vae"]), "--vae-decoder", str(files["decoder"]),
            "--image-encoder", str(files["image"]), "--pose-encoder", str(files["pose"]), *extra]


@pytest.fixture(scope="module")
def imported(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "xmdpt-release"
    r = CliRunner().invoke(app, _import_args(files, out))
    assert r.exit_code == 0, r.output
    return out


def test_import_writes_a_complete_pipeline_folder(files, imported):
    from xmdpt.encoders.vae import LatentCodec, read_vae_state_dict
    from xmdpt.model.folder import load_model_folder
    from xmdpt.core.pipeline_folder import check_pipeline_folder

    meta = check_pipeline_folder(imported)
    assert meta["source"] == "official" and meta["standin"] is False and meta["features_dtype"] == "float32"
    assert meta["decoder_finetuned"] is True and "diffuser_finetune_vae" in meta["decoder"]
    assert sorted(meta["encoder_weights"]) == ["image", "pose"]
    config = json.loads((imported / "config.json").read_text())
    assert config["sample"]["source_latent"] == "sample" and config["sample"]["cfg_scale"] == 2.0
    assert config["sample"]["cfg_power"] == 0.01 and config["sample"]["guidance_interval"] is None
    assert config["encoders"]["token_input_size"] == 224 and config["autoencoder"]["latent_scale"] == 0.18215
    assert config["encoders"]["image_encoder_weights"] == ""  # copied into encoders/, not a path on this machine
    assert config["source"]["sha256"] == __import__("hashlib").sha256(files["ckpt"].read_bytes()).hexdigest()

    # denoiser weights = the authors' tensors; decoder = the fine-tuned folder's; encoder = the SD VAE's
    model, _ = load_model_folder(imported)
    for k, v in files["model"].state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    codec = LatentCodec.from_folder(str(imported / "autoencoder"))
    got = codec.vae.state_dict()
    fine, sd_vae = read_vae_state_dict(files["decoder"]), read_vae_state_dict(files["vae"])
    assert all(torch.equal(got[k], fine[k]) for k in got if k.startswith(("decoder.", "post_quant_conv.")))
    assert all(torch.equal(got[k], sd_vae[k]) for k in got if k.startswith(("encoder.", "quant_conv.")))
    assert not torch.equal(fine["decoder.conv_out.weight"], sd_vae["decoder.conv_out.weight"])


def test_imported_encoders_give_the_tokens_of_the_original_files(files, imported):
    """The copies in encoders/ (timm layout) load to the same tokens as the user's files (timm / hub layouts)."""
    from xmdpt.core.config import EncodersConfig
    from xmdpt.encoders.dino import TokenEncoder, prepare_image

    x = prepare_image(torch.rand(1, 3, 256, 256) * 2 - 1, 224)
    for role, key in (("image", "image"), ("pose", "pose")):
        enc = EncodersConfig(pretrained=True, token_input_size=224, image_encoder=release.ARCH,
                             pose_encoder=release.ARCH, **{f"{role}_encoder_weights": str(files[key])})
        direct = TokenEncoder.from_config(enc, role)
        copied = TokenEncoder.from_weights(EncodersConfig(pretrained=True, token_input_size=224,
                                                          image_encoder=release.ARCH, pose_encoder=release.ARCH),
                                           role, str(imported / "encoders" / f"{role}.safetensors"))
        assert torch.equal(direct(x), copied(x)), role


def _run_generate(model: str, files, out: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "xmdpt"), "generate", "--model", model, "--source", str(files["person"]),
                           "--pose", str(files["pose_photo"]), "--pose-model", str(env["POSE_TASK"]), "--out",
                           str(out), "--steps", "2", "--seed", "0", "--device", "cpu", *extra],
                          capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow  # subprocesses
def test_import_register_generate_from_sqlite_registry(files, tmp_path, pose_task_path):
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": db, "XMDPT_CACHE_DIR": str(tmp_path / "cache"),
           "POSE_TASK": str(pose_task_path)}
    r = subprocess.run([str(BIN / "xmdpt"), *_import_args(files, tmp_path / "folder", "--register", "xmdpt-official",
                                                          "--alias", "released")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "models:/xmdpt-official@released" in r.stdout

    from mlflow import MlflowClient

    mv = MlflowClient(tracking_uri=db, registry_uri=db).get_model_version_by_alias("xmdpt-official", "released")
    assert mv.tags["source"] == "official" and mv.tags["preset"] == release.PRESET
    assert mv.tags["checkpoint_sha256"] == __import__("hashlib").sha256(files["ckpt"].read_bytes()).hexdigest()
    assert "diffuser_finetune_vae" in mv.tags["decoder"]

    out = tmp_path / "out.png"
    res = _run_generate("models:/xmdpt-official@released", files, out, env)
    assert res.returncode == 0, res.stderr[-3000:]
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (176, 256)  # the source's 176:256 aspect, as the PIDM protocol
    arr = np.asarray(img)
    assert arr.std() > 1.0  # an image, not a constant

    sq = tmp_path / "square.png"
    res = _run_generate("models:/xmdpt-official@released", files, sq, env, "--square")
    assert res.returncode == 0, res.stderr[-3000:]
    assert Image.open(sq).size == (256, 256)
    # the same seed gives the same image (the sampled source latent is seeded)
    again = tmp_path / "again.png"
    assert _run_generate("models:/xmdpt-official@released", files, again, env).returncode == 0
    assert np.array_equal(np.asarray(Image.open(again)), arr)


@pytest.mark.slow  # subprocesses
def test_import_register_generate_over_an_mlflow_server(mlflow_server, files, tmp_path, pose_task_path):
    server = mlflow_server()
    env = {**os.environ, "XMDPT_CACHE_DIR": str(tmp_path / "cache"), "POSE_TASK": str(pose_task_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    r = CliRunner().invoke(app, _import_args(files, tmp_path / "folder", "--register", "xmdpt-official",
                                             "--alias", "released", "--tracking-uri", server))
    assert r.exit_code == 0, r.output
    assert f"in {server}" in r.output
    out = tmp_path / "out.png"
    res = _run_generate("models:/xmdpt-official@released", files, out, {**env, "MLFLOW_TRACKING_URI": server})
    assert res.returncode == 0, res.stderr[-3000:]
    assert Image.open(out).size == (176, 256)


# ------------------------------------------------------------------------------------------------
# Clear errors, before any compute
# ------------------------------------------------------------------------------------------------

def test_a_model_folder_is_not_a_pipeline_folder(files, imported, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(imported / f, bare / f)
    r = CliRunner().invoke(app, ["generate", "--model", str(bare), "--source", str(files["person"]), "--pose",
                                 str(files["pose_photo"]), "--out", str(tmp_path / "o.png")])
    assert r.exit_code == 2
    assert "is a model folder" in r.output and "not a pipeline folder" in r.output
    assert "xmdpt import-official" in r.output and "pyfunc" not in r.output


def test_checkpoint_of_another_preset_is_named_in_preset_terms(tmp_path):
    from xmdpt.core.config import ModelConfig
    from xmdpt.model import XMDPT
    from xmdpt.release.official import export_official_state_dict

    ckpt = tmp_path / "ema_0.9999_300000.pt"
    torch.save(export_official_state_dict(XMDPT(ModelConfig.from_preset("xmdpt-s/2"))), ckpt)
    r = CliRunner().invoke(app, ["import-official", str(ckpt), "--preset", "xmdpt-b/2", "--out", str(tmp_path / "o"),
                                 "--vae", str(tmp_path / "never-read")])
    assert r.exit_code == 2, r.output
    assert "is not an xmdpt-b/2 checkpoint" in r.output
    assert "the preset expects depth 12, hidden size 768, 12 heads" in r.output
    assert "the checkpoint has depth 12, hidden size 384, 6 heads" in r.output
    assert "that is xmdpt-s/2 (pass --preset xmdpt-s/2)" in r.output
    assert not (tmp_path / "o").exists()


def test_missing_hub_weights_offline_name_id_cache_and_setting(files, tmp_path, monkeypatch):
    from xmdpt.encoders.dino_backbone import hf_cache_dir

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # no local DINOv2 file: the hub id must be resolvable, and offline it is not (nothing cached here)
    args = ["import-official", str(files["ckpt"]), "--preset", release.PRESET, "--out", str(tmp_path / "o"),
            "--overrides", str(files["overrides"]), "--vae", str(files["vae"])]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert f"timm/{release.ARCH}" in text and hf_cache_dir() in text and "encoders.image_encoder_weights" in text
    # the SD VAE by hub id, offline and not cached
    r = CliRunner().invoke(app, args[:-2] + ["--vae", "stabilityai/sd-vae-ft-mse", "--image-encoder",
                                             str(files["image"]), "--pose-encoder", str(files["pose"])])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert "stabilityai/sd-vae-ft-mse" in text and hf_cache_dir() in text and "autoencoder.pretrained_id" in text
    assert not (tmp_path / "o").exists()


def test_decoder_folder_of_the_wrong_layout_names_the_missing_file(files, tmp_path):
    bad = tmp_path / "diffuser_finetune_vae"
    bad.mkdir()
    (bad / "config.json").write_text((files["decoder"] / "config.json").read_text())
    r = CliRunner().invoke(app, _import_args(files, tmp_path / "o")[:-4] + ["--vae-decoder", str(bad)])
    assert r.exit_code == 2, r.output
    assert "missing diffusion_pytorch_model.safetensors" in r.output
    (bad / "config.json").unlink()
    r = CliRunner().invoke(app, _import_args(files, tmp_path / "o")[:-4] + ["--vae-decoder", str(bad)])
    assert r.exit_code == 2 and "missing config.json" in r.output


def test_bf16_refused_where_the_device_has_no_bf16(imported, files, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    r = CliRunner().invoke(app, ["generate", "--model", str(imported), "--source", str(files["person"]), "--pose",
                                 str(files["pose_photo"]), "--out", str(tmp_path / "o.png"), "--precision", "bf16",
                                 "--device", "cpu"])
    assert r.exit_code == 2
    assert "sample.precision=bf16" in r.output and "native bf16" in r.output
    assert not (tmp_path / "o.png").exists()


def test_a_folder_with_hub_encoders_offline_names_id_cache_and_setting(files, imported, tmp_path, monkeypatch):
    """A folder imported without local DINOv2 files references timm's hub ids; offline and uncached, generate
    says which id, which cache folder and which setting, before any sampling."""
    import shutil

    from xmdpt.encoders.dino_backbone import hf_cache_dir

    folder = tmp_path / "hub-refs"
    shutil.copytree(imported, folder)
    meta = json.loads((folder / "pipeline.json").read_text())
    meta["encoder_weights"] = {}
    (folder / "pipeline.json").write_text(json.dumps(meta))
    shutil.rmtree(folder / "encoders")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r = CliRunner().invoke(app, ["generate", "--model", str(folder), "--source", str(files["person"]), "--pose",
                                 str(files["pose_photo"]), "--out", str(tmp_path / "o.png")])
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.split())
    assert f"timm/{release.ARCH}" in text and hf_cache_dir() in text and "_encoder_weights" in text
    assert not (tmp_path / "o.png").exists()
