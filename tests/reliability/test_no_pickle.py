"""Checkpoints and models are never unpickled: no pickle-capable loader in the package source, and
a malicious pickle handed to the loaders is refused without running its payload."""

from __future__ import annotations

import ast
import builtins
import dataclasses
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SOURCES = sorted([*(REPO / "xmdpt").rglob("*.py"), *(REPO / "pipelines").rglob("*.py"),
                  *(REPO / "benchmarks").rglob("*.py")])


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<dynamic>"
    return None


def unsafe_loads(source: str) -> list[str]:
    """``line: what`` for every call/import that can unpickle arbitrary objects."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(n and n.split(".")[0] in ("cloudpickle", "dill", "joblib") for n in names):
                found.append(f"{node.lineno}: imports {names}")
            if isinstance(node, ast.ImportFrom) and node.module == "pickle" and \
                    any(a.name in ("load", "loads", "Unpickler") for a in node.names):
                found.append(f"{node.lineno}: from pickle import load")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name == "torch.load" and _kw(node, "weights_only") is not True:
            found.append(f"{node.lineno}: torch.load without weights_only=True")
        elif name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in ("pickle", "cPickle",
                                                                                               "_pickle"):
            found.append(f"{node.lineno}: {name}")
        elif name in ("np.load", "numpy.load") and _kw(node, "allow_pickle") not in (None, False):
            found.append(f"{node.lineno}: {name} with allow_pickle")
        elif name.endswith("pd.read_pickle") or name.endswith("pandas.read_pickle"):
            found.append(f"{node.lineno}: {name}")
    return found


def test_the_scanner_finds_each_unsafe_form():
    bad = ("import torch, pickle, numpy as np\nimport cloudpickle\n"
           "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\nnp.load(p, allow_pickle=True)\n"
           "torch.load(p, weights_only=True)\nnp.load(p)\n")
    assert [f.split(":")[0] for f in unsafe_loads(bad)] == ["2", "3", "4", "5", "6"]


def test_package_source_has_no_pickle_loading():
    assert len(SOURCES) > 20
    found = {str(p.relative_to(REPO)): hits for p in SOURCES if (hits := unsafe_loads(p.read_text()))}
    assert found == {}


class _Payload:
    """Unpickling this creates ``marker`` (the stand-in for arbitrary code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def _malicious_pt(path: Path, marker: Path) -> Path:
    torch.save({"pos_embed": torch.zeros(1), "payload": _Payload(marker)}, path)
    assert b"builtins" in path.read_bytes() or b"open" in path.read_bytes()  # the payload is really in there
    return path


def test_import_official_refuses_a_pickle_payload(tmp_path):
    from xmdpt.release.official import import_official

    marker = tmp_path / "payload-ran"
    ckpt = _malicious_pt(tmp_path / "ema_0.9999_300000.pt", marker)
    with pytest.raises(ValueError, match=r"ema_0\.9999_300000\.pt.*refusing to unpickle"):
        import_official(ckpt, "xmdpt-s/2", tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # the same file under plain pickle rules would run the payload: the test is not vacuous
    torch.load(ckpt, weights_only=False)
    assert marker.exists()


def test_model_folder_with_a_pickle_instead_of_safetensors_fails_cleanly(tmp_path):
    from xmdpt.core.config import ModelConfig
    from xmdpt.model.folder import WEIGHTS_FILE, load_model_folder, write_model_folder
    from xmdpt.model.xmdpt import XMDPT

    cfg = ModelConfig.from_preset("xmdpt-tiny/2")
    folder = write_model_folder(tmp_path / "model", XMDPT(cfg).state_dict(), {"model": dataclasses.asdict(cfg)})
    load_model_folder(folder)  # the genuine folder loads
    marker = tmp_path / "payload-ran"
    _malicious_pt(folder / WEIGHTS_FILE, marker)
    with pytest.raises(ValueError, match=f"{WEIGHTS_FILE}: not a readable safetensors file"):
        load_model_folder(folder)
    assert not marker.exists()
