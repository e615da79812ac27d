"""An unusable output location (a file where a folder is expected, a full disk) fails the stage
with an error naming the path, and the previous run's manifest and tables stay intact."""

from __future__ import annotations

import errno
import subprocess
from pathlib import Path

import pytest

from xmdpt.data.quarantine import read_table

pytestmark = pytest.mark.ray


def _snapshot(cfg, manifest) -> tuple[bytes, dict]:
    path = Path(cfg.paths.artifacts_dir) / "pairs" / "manifest.json"
    tables = {name: read_table(e["uri"], rows=e["rows"]) for name, e in manifest["tables"].items()}
    return path.read_bytes(), tables


def _assert_intact(cfg, manifest, before) -> None:
    text, tables = _snapshot(cfg, manifest)
    assert text == before[0]
    assert all(tables[name].equals(before[1][name]) for name in tables)


def test_storage_root_under_a_file_names_the_path_and_keeps_outputs(pairs_run, tmp_path):
    from xmdpt.data.pairs import build_pairs

    cfg, manifest = pairs_run
    before = _snapshot(cfg, manifest)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a regular file where storage_root's parent should be")
    broken = cfg.replace(paths={"storage_root": str(blocker / "store")}, data={"split_test_fraction": 0.5})
    with pytest.raises(NotADirectoryError) as err:
        build_pairs(broken)
    assert str(blocker / "store" / "pairs") in str(err.value) and "storage_root" in str(err.value)
    _assert_intact(cfg, manifest, before)


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs, filled up (needs root with mount rights; skipped otherwise)."""
    mnt = tmp_path / "full"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        with open(mnt / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_names_the_file_and_keeps_outputs(pairs_run, full_disk):
    from xmdpt.data.pairs import build_pairs

    cfg, manifest = pairs_run
    before = _snapshot(cfg, manifest)
    broken = cfg.replace(paths={"storage_root": str(full_disk / "store")})
    with pytest.raises(OSError) as err:
        build_pairs(broken)
    assert err.value.errno == errno.ENOSPC
    assert str(full_disk / "store" / "pairs") in str(err.value) and "part-00000.parquet" in str(err.value)
    written = [p for p in (full_disk / "store").rglob("*.parquet")]
    assert written == []  # the partial file was removed
    _assert_intact(cfg, manifest, before)
