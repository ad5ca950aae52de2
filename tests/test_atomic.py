"""Atomic writes: a writer killed with SIGKILL mid-write leaves the target absent or as it was."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

import anemoi_ckpt

CHILD = """
import sys, time, torch, anemoi_ckpt
with anemoi_ckpt.Writer(sys.argv[1]) as w:
    for i in range(10_000):
        w.add(f"t{i}", torch.full((1 << 18,), float(i)))   # 1 MiB each
        print(i, flush=True)
        time.sleep(0.01)
"""


def kill_mid_write(target: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(20):  # ~20 tensors in: the temporary file holds a half-written zip
            assert proc.stdout.readline(), "writer exited early"
        temps = [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
        assert temps, "the writer is not writing to a temporary file"
        assert temps[0].stat().st_size > 10 << 20
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_leaves_target_absent(tmp_path: Path) -> None:
    target = tmp_path / "new.anc"
    kill_mid_write(target)
    assert not target.exists()


def test_sigkill_leaves_previous_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "model.anc"
    anemoi_ckpt.save(target, {"previous": torch.arange(100.0)})
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    kill_mid_write(target)
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    with anemoi_ckpt.open(target) as ck:
        assert ck.verify().ok and torch.equal(ck.tensors()["previous"], torch.arange(100.0))


def test_output_permissions_follow_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        anemoi_ckpt.save(tmp_path / "p.anc", {"a": torch.ones(1)})
    finally:
        os.umask(old)
    assert (tmp_path / "p.anc").stat().st_mode & 0o777 == 0o644


def test_durable_save_starts_writeback_as_it_writes(tmp_path: Path, monkeypatch) -> None:
    """A durable save asks the kernel to start write-back while it writes (so its fsync has little
    left), through every write path of the writer; the bytes are unchanged; durable=False never."""
    from anemoi_ckpt.container import writeback

    calls: list[int] = []
    monkeypatch.setattr(writeback, "start_writeback", lambda fd: calls.append(os.fstat(fd).st_size))
    tensors = {f"t{i}": torch.full((1 << 20,), float(i)) for i in range(6)}  # 4 MiB each
    a, b = tmp_path / "a.anc", tmp_path / "b.anc"
    anemoi_ckpt.save(a, tensors, durable=True)
    assert len(calls) >= 2 and calls == sorted(calls)  # every 8 MiB, as the file grows
    kicks = len(calls)
    anemoi_ckpt.save(b, tensors, durable=False)
    assert len(calls) == kicks
    with anemoi_ckpt.open(a) as ck:
        assert ck.verify().ok
        assert all(torch.equal(ck.tensors()[k], v) for k, v in tensors.items())


def test_start_writeback_is_harmless(tmp_path: Path) -> None:
    """The real call (Linux) or the no-op (elsewhere) on an ordinary file: no error, no change."""
    from anemoi_ckpt.container.writeback import WriteBehindFile, start_writeback

    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    with WriteBehindFile(fd, every=1000) as fh:
        for i in range(5):
            fh.write(bytes([i]) * 1500)
        fh.seek(0)
        fh.write(b"head")
        start_writeback(fh.fileno())
        fh.flush()
        os.fsync(fh.fileno())
    data = path.read_bytes()
    assert data[:4] == b"head" and data[4:1500] == b"\0" * 1496 and data[-1500:] == b"\4" * 1500
