"""Fixtures for the reliability tests: the data stages' fixture builders, reused (not copied).

The DeepFashion tree builders and the bad-input fixture live in ``tests/stage_fixtures.py``;
that module starts a local S3 server when imported, so it is imported at most once per session:
the copy pytest loaded as a plugin (``tests/conftest.py``) is reused.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

TESTS = Path(__file__).resolve().parents[1]


def _module(path: Path, name: str) -> ModuleType:
    for mod in list(sys.modules.values()):
        if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == path:
            return mod
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def data_fixtures() -> ModuleType:
    """``tests/stage_fixtures.py``: write_deepfashion, add_bad_inputs, stage_config, run_chain, ..."""
    return _module(TESTS / "stage_fixtures.py", "stage_fixtures")


def image_fixtures() -> ModuleType:
    """``tests/training/test_autoencoder.py``: write_image_dataset, image_config."""
    return _module(TESTS / "training" / "test_autoencoder.py", "xmdpt_tests_training_autoencoder")


@pytest.fixture(scope="session")
def dfx() -> ModuleType:
    return data_fixtures()


@pytest.fixture(scope="session")
def image_mod() -> ModuleType:
    return image_fixtures()


@pytest.fixture(scope="session")
def pairs_run(ray_local, tmp_path_factory, dfx):
    """A clean 6-identity PIDM tree (every image annotated) through the `pairs` stage.

    Shared by the session: a test that damages its files restores them (``keep_files``)."""
    from xmdpt.data.pairs import build_pairs

    tmp_path = tmp_path_factory.mktemp("pairs_run")
    dfx.write_deepfashion(tmp_path / "ds", layouts=("pidm",))
    cfg = dfx.stage_config(tmp_path, tmp_path / "ds", tmp_path / "no-estimator.task")
    return cfg, build_pairs(cfg)



@pytest.fixture
def keep_files():
    """``keep(*paths)``: the files' bytes are put back (or the files removed) after the test."""
    saved: dict[Path, bytes | None] = {}

    def keep(*paths) -> None:
        for p in map(Path, paths):
            saved.setdefault(p, p.read_bytes() if p.exists() else None)

    yield keep
    for p, data in saved.items():
        if data is None:
            p.unlink(missing_ok=True)
        else:
            p.write_bytes(data)
