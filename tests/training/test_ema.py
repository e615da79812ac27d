"""EMA warm-up: a short run must not keep a share of the (zero-output) initial weights."""

from __future__ import annotations

import torch
from torch import nn

from xmdpt.training.ema import EMA


def _run(warmup: bool, steps: int = 400, decay: float = 0.995) -> float:
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)  # adaLN-Zero style: the initial output layer is zero
    ema = EMA(model, decay, warmup=warmup)
    with torch.no_grad():
        model.weight.fill_(1.0)  # the trained value
    for _ in range(steps):
        ema.update(model)
    assert ema.num_updates == steps
    return float(ema.state_dict()["weight"])


def test_without_warmup_the_initial_weights_keep_decay_to_the_steps():
    assert abs(_run(warmup=False) - (1 - 0.995 ** 400)) < 1e-5  # 0.865: 13.5 % of the init remains


def test_warmup_forgets_the_initial_weights():
    assert _run(warmup=True) > 0.999


def test_warmup_rate_ramps_then_caps():
    ema = EMA(nn.Linear(1, 1), 0.9999)
    rates = []
    for _ in range(3):
        rates.append(ema.current_decay())
        ema.num_updates += 1
    assert rates == [1 / 10, 2 / 11, 3 / 12]
    ema.num_updates = 10**7
    assert ema.current_decay() == 0.9999
    assert EMA(nn.Linear(1, 1), 0.9999, warmup=False).current_decay() == 0.9999
