"""Run an ONNX graph as another CPU would: ONNX Runtime under ``qemu-user`` emulating an older x86-64.

ONNX Runtime picks its int8 kernels from the CPU's features (``cpuid``). ``qemu-x86_64 -cpu Haswell`` reports
an AVX2 CPU without VNNI, so a VNNI machine can check what an AVX2-only serving node computes: the same
saturating uint8 x int8 kernels, for real, only slower (emulation). Used by the tests and benchmarks to show
that the portable int8 recipe predicts the same on both kinds of CPU. Needs the Debian package ``qemu-user``.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from transferkit.errors import ExportError

QEMU = "qemu-x86_64"
# An AVX2 CPU without AVX-512 or VNNI (the AMD EPYC Zen 1-3 / Intel Haswell-Broadwell int8 path).
AVX2_CPU_MODEL = "Haswell"

_RUNNER = """
import sys, numpy as np, onnxruntime as ort
model, feeds_path, out_path, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = ort.SessionOptions()
options.intra_op_num_threads = threads
options.log_severity_level = 3
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
feeds = np.load(feeds_path)
names = sorted({key.split("/", 1)[1] for key in feeds.files})
batches = sorted({int(key.split("/", 1)[0]) for key in feeds.files})
outputs = [session.run(None, {n: feeds[f"{b}/{n}"] for n in names})[0] for b in batches]
np.save(out_path, np.concatenate(outputs, axis=0))
"""


def emulation_available() -> bool:
    """True on x86-64 Linux with ``qemu-x86_64`` on PATH (it runs this interpreter's own x86-64 binary)."""
    return sys.platform == "linux" and platform.machine() in ("x86_64", "AMD64") and shutil.which(QEMU) is not None


def run_on_emulated_cpu(model: str | Path, batches: list[dict[str, np.ndarray]], *, cpu_model: str = AVX2_CPU_MODEL,
                        threads: int = 2, timeout_s: float = 900.0) -> np.ndarray:
    """First output of ``model`` on every batch, computed by ONNX Runtime on an emulated ``cpu_model``.

    Args:
        model: ONNX file.
        batches: Feed dicts (input name -> array), run one after another.
        cpu_model: qemu CPU model (``qemu-x86_64 -cpu help``).
        threads: ONNX Runtime intra-op threads.
        timeout_s: Give up after this long (emulation is tens of times slower than native).

    Returns:
        The concatenated outputs.

    Raises:
        ExportError: qemu is missing, or the emulated run failed or timed out.
    """
    if not emulation_available():
        raise ExportError(f"{QEMU}: not found; install the Debian package qemu-user to emulate another CPU")
    with tempfile.TemporaryDirectory(prefix="tk-emulate-") as work:
        feeds_path, out_path = Path(work) / "feeds.npz", Path(work) / "out.npy"
        np.savez(feeds_path, **{f"{i}/{name}": array for i, batch in enumerate(batches)
                                for name, array in batch.items()})
        command = [shutil.which(QEMU) or QEMU, "-cpu", cpu_model, sys.executable, "-c", _RUNNER, str(model),
                   str(feeds_path), str(out_path), str(threads)]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s,
                                  env={**os.environ, "OMP_NUM_THREADS": str(threads)}, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ExportError(f"{model}: emulated {cpu_model} run did not finish in {timeout_s:.0f} s") from exc
        if done.returncode != 0 or not out_path.exists():
            # qemu prints one warning per CPU feature it cannot emulate; the cause is the last other line.
            lines = [line for line in done.stderr.splitlines() if line.strip() and "warning: TCG" not in line]
            raise ExportError(f"{model}: emulated {cpu_model} run failed (exit {done.returncode}): "
                              f"{lines[-1] if lines else 'no output'}")
        return np.load(out_path)
