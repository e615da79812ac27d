"""Fixtures for the model/diffusion behaviour tests (helpers in ``xmdpt_test_helpers``)."""

from __future__ import annotations

import pytest
import torch
from xmdpt_test_helpers import make_inputs, randomize, tiny_config

from xmdpt.core.config import ModelConfig
from xmdpt.model import XMDPT


@pytest.fixture
def cfg() -> ModelConfig:
    return tiny_config()


@pytest.fixture
def model(cfg) -> XMDPT:
    torch.manual_seed(0)
    return randomize(XMDPT(cfg))


@pytest.fixture
def inputs(cfg) -> dict[str, torch.Tensor]:
    return make_inputs(cfg)
