"""SIGKILL of a Ray Data encoder actor in the middle of the `features` stage: Ray restarts the actor
(``max_restarts=-1``) and retries its task (``max_task_retries=-1``, Ray Data's defaults for actor
pools, which the stage keeps); the cache ends complete with no row lost or duplicated.

Killing a Ray Train worker mid-training is covered by
``tests/training/test_train_resume.py::test_worker_sigkill_resumes_from_checkpoint``.

To kill the actor at a known point, the test holds one image's ``open()`` with a fanotify
permission gate (root only; skipped otherwise): the actor encoding that image's batch blocks in
``open``, the test SIGKILLs exactly that process (the pid fanotify reports), and lets every later
``open`` of the file through.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import threading
from pathlib import Path

import pyarrow.dataset as pads
import pytest

from xmdpt.data import schema

pytestmark = pytest.mark.ray


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


_FAN_CLASS_CONTENT, _FAN_CLOEXEC, _FAN_OPEN_PERM, _FAN_MARK_ADD, _AT_FDCWD, _FAN_ALLOW = 0x4, 0x1, 0x10000, 0x1, -100, 1
_EVENT = struct.Struct("IBBHQii")  # struct fanotify_event_metadata
_RESPONSE = struct.Struct("iI")  # struct fanotify_response


class OpenGate(threading.Thread):
    """Block the first ``open()`` of ``path``, SIGKILL the process that made it, allow all later opens."""

    def __init__(self, path: Path, shards_done: list) -> None:
        super().__init__(daemon=True)
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self.fd = libc.fanotify_init(_FAN_CLASS_CONTENT | _FAN_CLOEXEC, os.O_RDONLY)
        if self.fd < 0:
            pytest.skip(f"fanotify unavailable here: {os.strerror(ctypes.get_errno())}")
        if libc.fanotify_mark(self.fd, _FAN_MARK_ADD, _FAN_OPEN_PERM, _AT_FDCWD, str(path).encode()) != 0:
            os.close(self.fd)
            pytest.skip(f"fanotify_mark failed: {os.strerror(ctypes.get_errno())}")
        self.shards_done = shards_done
        self.killed: dict = {}
        self.allowed: list[int] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                if not select.select([self.fd], [], [], 0.1)[0]:
                    continue
                buf = os.read(self.fd, 4096)
                while len(buf) >= _EVENT.size:
                    length, _, _, _, _, efd, pid = _EVENT.unpack_from(buf)
                    if not self.killed:
                        self.killed = {"pid": pid, "cmdline": _cmdline(pid), "shards_done": list(self.shards_done)}
                        os.kill(pid, signal.SIGKILL)
                    else:
                        self.allowed.append(pid)
                    try:
                        os.write(self.fd, _RESPONSE.pack(efd, _FAN_ALLOW))
                    except OSError:
                        pass  # the opener is gone
                    os.close(efd)
                    buf = buf[length:]
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            os.close(self.fd)  # pending permission events are allowed


@pytest.mark.timeout(420)
def test_sigkill_of_an_encoder_actor_mid_run_loses_and_duplicates_nothing(ray_local, tmp_path, image_mod):
    from xmdpt.features.stage import build_feature_cache

    validate = image_mod.write_image_dataset(tmp_path, n_train=8, n_test=4)
    cfg = image_mod.image_config(tmp_path, autoencoder={"train_steps": 2},
                                 features={"shard_images": 2, "batch_size": 2})
    from xmdpt.training.autoencoder import fit_autoencoder

    ae = fit_autoencoder(cfg, validate)
    paths = sorted(pads.dataset(validate["tables"]["poses"]["uri"], format="parquet").to_table()
                   .column(schema.IMAGE_PATH).to_pylist())
    target = Path(cfg.paths.dataset_root) / paths[6]  # in chunk 3 of 6
    shards_done: list[int] = []
    gate = OpenGate(target, shards_done)
    gate.start()
    try:
        m = build_feature_cache(cfg, ae_manifest=ae, validate_manifest=validate, on_shard=shards_done.append)
    finally:
        gate.stop.set()
        gate.join(10)
    assert gate.error is None, gate.error
    killed = gate.killed
    assert "EncoderActor" in killed["cmdline"], killed
    assert len(killed["shards_done"]) < 6  # the run was not over when the actor died
    assert gate.allowed and killed["pid"] not in gate.allowed  # a new actor process read the image
    assert sorted(shards_done) == list(range(6)) and m["shards_encoded"] == 6

    rows = pads.dataset(m["tables"]["features"]["uri"], format="parquet").to_table()
    keys = list(zip(rows.column(schema.IMAGE_PATH).to_pylist(), rows.column(schema.FLIP).to_pylist()))
    assert len(keys) == len(set(keys)) == m["tables"]["features"]["rows"] == 2 * 12
    assert set(keys) == {(p, f) for p in paths for f in (False, True)}
    assert m["images"] == {"total": 12, "cached": 12, "quarantined": 0}
    assert m["validation"]["success"]
