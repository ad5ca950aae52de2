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
