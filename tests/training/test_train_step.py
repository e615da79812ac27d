"""The plain-PyTorch training step and pickle-free checkpoints (no Ray)."""

from __future__ import annotations

import json

import pytest
import torch

from xmdpt.diffusion import GaussianDiffusion
from xmdpt.model import XMDPT
from xmdpt.model.folder import load_model_folder
from xmdpt.training.checkpoint import (
    OPTIMIZER_FILE, RAW_WEIGHTS_FILE, TRAINER_STATE_FILE, flatten_optimizer_state, load_checkpoint, save_checkpoint,
    unflatten_optimizer_state,
)
from xmdpt.training.ema import EMA
from xmdpt.training.step import autocast_dtype, cpu_has_native_bf16, lr_at, sample_posterior, train_step


def _setup(make_config, tmp_path, **train):
    cfg = make_config(tmp_path, **train)
    torch.manual_seed(0)
    model = XMDPT(cfg.model)
    ema = EMA(model, cfg.train.ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=0.0)
    return cfg, model, ema, opt, GaussianDiffusion.from_config(cfg.diffusion)


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x0_mean": torch.randn(n, 4, 8, 8, generator=g), "x0_std": 0.1 * torch.rand(n, 4, 8, 8, generator=g),
            "ref_mean": torch.randn(n, 4, 8, 8, generator=g), "ref_std": 0.1 * torch.rand(n, 4, 8, 8, generator=g),
            "pose_tokens": torch.randn(n, 5, 16, generator=g), "ref_tokens": torch.randn(n, 5, 16, generator=g)}


def test_posterior_is_sampled_and_scaled():
    mean, std = torch.full((4096, 1, 1, 1), 2.0), torch.full((4096, 1, 1, 1), 0.5)
    z = sample_posterior(mean, std, 0.25, torch.Generator().manual_seed(0))
    assert abs(z.mean().item() - 0.5) < 0.01 and abs(z.std().item() - 0.125) < 0.01
    assert sample_posterior(mean, torch.zeros_like(std), 0.25).unique().tolist() == [0.5]


def test_lr_warmup_and_precision():
    assert [lr_at(s, 1e-3, 4) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    assert lr_at(0, 1e-4, 0) == 1e-4
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert autocast_dtype("fp32", torch.device("cuda")) is None
    with pytest.raises(ValueError, match="unknown precision 'fp16'"):
        autocast_dtype("fp16", torch.device("cpu"))


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, None), (True, False, torch.bfloat16),
                                                        (False, True, torch.bfloat16)])
def test_auto_precision_follows_the_cpus_bf16_support(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert cpu_has_native_bf16() is (avx512_bf16 or amx)
    assert autocast_dtype("auto", torch.device("cpu")) is expected


def test_overfitting_one_batch_lowers_the_loss(make_config, tmp_path):
    cfg, model, ema, opt, diffusion = _setup(make_config, tmp_path, lr=2e-3)
    batch = _batch()
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(60):
        m = train_step(model, ema, opt, batch, diffusion=diffusion, latent_scale=0.5, cond_drop_prob=0.1,
                       mask_ratio=cfg.model.mask_ratio, accum_steps=2, grad_clip_norm=1.0,
                       lr=lr_at(step, 2e-3, 5), generator=g)
        losses.append(m["loss"])
        assert m["loss"] == pytest.approx(m["loss_unmasked"] + m["loss_masked"], rel=1e-5)
        assert m["loss_masked"] > 0 and m["vb"] >= 0
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)
    # EMA moved toward the trained weights but is not equal to them
    w = dict(model.named_parameters())
    k = next(k for k in w if k.endswith("weight") and w[k].ndim == 2)
    assert not torch.equal(ema.state_dict()[k], w[k].detach())


def test_checkpoint_round_trip_is_pickle_free(make_config, tmp_path):
    cfg, model, ema, opt, diffusion = _setup(make_config, tmp_path)
    for _ in range(2):
        train_step(model, ema, opt, _batch(), diffusion=diffusion, latent_scale=0.5, cond_drop_prob=0.1,
                   mask_ratio=0.3, generator=torch.Generator().manual_seed(1))
    config = {**cfg.to_dict(), "latent_scale": 0.5}
    path = save_checkpoint(tmp_path / "ckpt", model=model, ema=ema, opt=opt, config=config,
                           trainer_state={"step": 2, "data_hash": "abc", "history": [{"step": 2, "loss": 1.0}]})
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(["config.json", "model.safetensors", RAW_WEIGHTS_FILE, OPTIMIZER_FILE, TRAINER_STATE_FILE])
    assert all(n.endswith((".json", ".safetensors")) for n in names)
    assert json.loads((path / "config.json").read_text())["latent_scale"] == 0.5

    # the checkpoint is a model folder holding the EMA weights
    ema_model, _ = load_model_folder(path)
    for k, v in ema_model.state_dict().items():
        torch.testing.assert_close(v, ema.state_dict()[k])

    torch.manual_seed(123)
    model2 = XMDPT(cfg.model)
    ema2 = EMA(model2, cfg.train.ema_decay)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=cfg.train.lr)
    state = load_checkpoint(path, model=model2, ema=ema2, opt=opt2)
    assert state["step"] == 2 and state["data_hash"] == "abc" and state["history"][0]["loss"] == 1.0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(model2.state_dict()[k], v)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for idx, entry in s1["state"].items():
        for name, v in entry.items():
            torch.testing.assert_close(s2["state"][idx][name], v)
    # both continue identically
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    m1 = train_step(model, ema, opt, _batch(seed=3), diffusion=diffusion, latent_scale=0.5, cond_drop_prob=0.1,
                    mask_ratio=0.3, generator=g1)
    m2 = train_step(model2, ema2, opt2, _batch(seed=3), diffusion=diffusion, latent_scale=0.5, cond_drop_prob=0.1,
                    mask_ratio=0.3, generator=g2)
    assert m1["loss"] == pytest.approx(m2["loss"], rel=1e-6)


def test_optimizer_flattening_round_trip():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    assert set(tensors) == {"state.0.step", "state.0.exp_avg", "state.0.exp_avg_sq"}
    json.dumps(meta)
    back = unflatten_optimizer_state(tensors, meta)
    assert back["param_groups"] == opt.state_dict()["param_groups"]
    torch.testing.assert_close(back["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_canet_weight_decay_shrinks_only_canet(make_config, tmp_path):
    """train.canet_weight_decay decays CANet's weights and nothing else; with it unset, one group."""
    from xmdpt.training.step import make_optimizer

    cfg = make_config(tmp_path)
    model = XMDPT(cfg.model)
    assert len(make_optimizer(model, cfg.train).param_groups) == 1
    tc = cfg.replace(train={"canet_weight_decay": 0.5, "weight_decay": 0.0}).train
    opt = make_optimizer(model, tc, lr=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.5]
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in model.canet.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no gradient: only the decay moves a weight
    opt.step()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    canet = {f"canet.{n}" for n, p in model.canet.named_parameters() if p.abs().sum() > 0}
    assert moved == canet
    name, w = next((n, p) for n, p in model.canet.named_parameters() if n.endswith("weight") and p.abs().sum() > 0)
    assert torch.allclose(w, before[f"canet.{name}"] * (1 - 0.1 * 0.5))


def test_negative_weight_decay_is_refused(make_config, tmp_path):
    from xmdpt.core.config import ConfigError

    cfg = make_config(tmp_path)
    with pytest.raises(ConfigError, match="train.canet_weight_decay"):
        cfg.replace(train={"canet_weight_decay": -1.0})
    with pytest.raises(ConfigError, match="train.weight_decay"):
        cfg.replace(train={"weight_decay": -1.0})
