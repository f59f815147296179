"""Atomic outputs under SIGKILL: a writer killed at any moment leaves the old file or the new one.

Child processes write, over and over, (1) a 16 MiB file with a checksum through
``runtime.atomic.atomic_write_bytes`` and (2) the three files of ``sim.export`` (QDQ model, float
model, AIMET encodings, alternating encodings versions so that consecutive files differ). They are
killed with SIGKILL at moments drawn from a fixed seed. Afterwards every destination exists (a
first write had completed) and is complete and valid: the checksum matches; the models pass
``onnx.checker`` and plan on the integer runtime; the encodings read back. Temporary files may
remain, but are hidden ``.<name>.<random>.tmp`` files that no one would take for an output.
"""
from __future__ import annotations

import hashlib
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fuzz import REPO

KILLS = 8  # raw writers killed (benchmarks/fuzz.py --kills runs more)
EXPORT_KILLS = 2

RAW_CHILD = r"""
import hashlib, sys
from runtime.atomic import atomic_write_bytes
dest = sys.argv[1]
body = bytes(range(256)) * (1 << 16)  # 16 MiB
i = 0
while True:
    payload = i.to_bytes(8, "little") + body
    atomic_write_bytes(dest, payload + hashlib.sha256(payload).digest())
    if i == 0:
        print("ready", flush=True)
    i += 1
"""

EXPORT_CHILD = r"""
import sys, time
import torch
torch.set_num_threads(1)
from tests.hwsim.sim_models import small_calibrated_sim
sim, _ = small_calibrated_sim("dsp-int8", n=8)
i = 0
while True:
    t0 = time.perf_counter()
    sim.export(sys.argv[1], "model", encodings_version=("1.0.0", "2.0.0")[i % 2])
    if i == 0:
        print(f"ready {time.perf_counter() - t0:.6f}", flush=True)
    i += 1
"""


def _start(code: str, arg: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code, str(arg)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_ready(proc: subprocess.Popen, timeout: float = 240.0) -> str:
    """The child's 'ready' line (its first complete write); fails with its stderr if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            line = proc.stdout.readline()
            if line.startswith("ready"):
                return line
        if proc.poll() is not None:
            raise AssertionError(f"writer exited with {proc.returncode}: {proc.stderr.read()[-3000:]}")
    proc.kill()
    raise AssertionError("writer never finished its first write")


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def _leftovers(folder: Path, outputs: set[str]) -> list[str]:
    """Files in ``folder`` that are not outputs: each must be a hidden ``.<output>.<random>.tmp``."""
    others = sorted(p.name for p in folder.iterdir() if p.name not in outputs)
    for name in others:
        assert name.startswith(".") and name.endswith(".tmp") and any(name.startswith(f".{o}.") for o in outputs), \
            f"{folder}: {name!r} could be taken for an output"
    return others


def kill_raw_writer(folder: Path, delay: float) -> tuple[bool, list[str]]:
    """Start the raw writer in ``folder``, SIGKILL it ``delay`` seconds after its first complete
    write; returns (the destination is complete, the temporary files left)."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = folder / "big.bin"
    proc = _start(RAW_CHILD, dest)
    try:
        _wait_ready(proc)
        time.sleep(delay)
    finally:
        _kill(proc)
    data = dest.read_bytes()
    complete = len(data) == 8 + (1 << 24) + 32 and hashlib.sha256(data[:-32]).digest() == data[-32:]
    return complete, _leftovers(folder, {"big.bin"})


def test_atomic_write_killed_at_random_moments_leaves_a_complete_file(tmp_path):
    rng = random.Random(9)  # fixed seed: the kill moments
    with_temp = 0
    for k in range(KILLS):
        complete, left = kill_raw_writer(tmp_path / f"run{k}", rng.uniform(0.0, 0.3))
        assert complete, f"kill {k}: a partial file"
        with_temp += bool(left)
    # the kills landed inside writes (a temporary file was open): the test exercised what it claims
    assert with_temp >= 1


def _check_export(folder: Path) -> None:
    import onnx

    import runtime
    from runtime.aimet import read_encodings

    for name in ("model.onnx", "model_float.onnx"):
        m = onnx.load(str(folder / name))
        onnx.checker.check_model(m)
    runtime.load(folder / "model.onnx", "dsp-int8")
    enc = read_encodings(folder / "model.encodings")
    assert enc.all()  # every version: 1.0.0 splits activations and params, 2.0.0 does not


def kill_export_writers(folders: list[Path], rng: random.Random) -> None:
    """Start one ``sim.export`` writer per folder (together: one torch start-up's wait), SIGKILL each
    at a random moment within three exports after its first; then check every folder."""
    procs = [_start(EXPORT_CHILD, f) for f in folders]
    try:
        seconds = [float(_wait_ready(p).split()[1]) for p in procs]
        for p, s in zip(procs, seconds):
            time.sleep(rng.uniform(0.0, 3 * s))
            _kill(p)
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
    for f in folders:
        _check_export(f)
        _leftovers(f, {"model.onnx", "model_float.onnx", "model.encodings"})


def test_sim_export_killed_at_random_moments_leaves_valid_files(tmp_path):
    kill_export_writers([tmp_path / f"export{k}" for k in range(EXPORT_KILLS)], random.Random(10))


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    from runtime import atomic

    dest = tmp_path / "out.json"
    atomic.atomic_write_text(dest, "old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_text(dest, "new")
    assert dest.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]
