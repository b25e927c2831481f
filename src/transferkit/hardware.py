"""What the CPU can do for int8 inference, read from the operating system.

ONNX Runtime's int8 kernels are chosen at run time by CPU features, and the same int8 graph can compute
different numbers on different CPUs: on x86-64 without VNNI, the uint8 x int8 kernels multiply with
``vpmaddubsw``, which adds adjacent products into *saturating 16-bit* sums. With 8-bit weights two products
of up to 255 x 127 overflow 32,767; with 7-bit weights (``reduce_range``) they cannot (2 x 255 x 64 = 32,640).
VNNI (AVX-512 VNNI, AVX-VNNI) and AMX accumulate in 32 bits, as do ARM's dot-product instructions.

:func:`detect_cpu` reads ``/proc/cpuinfo`` (the flags Kubernetes Node Feature Discovery also publishes as
``feature.node.kubernetes.io/cpu-cpuid.*`` labels); elsewhere it falls back to :mod:`platform`.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CPUINFO = Path("/proc/cpuinfo")

# int8 instruction-set levels, best first. ``exact_u8s8``: uint8 x int8 products accumulate without
# 16-bit saturation, so full-range (8-bit) weights compute the same numbers as on any other such CPU.
INT8_ISAS = {
    "amx": True,            # AMX-INT8 tiles (Sapphire Rapids and later)
    "avx512_vnni": True,    # AVX-512 VNNI (Cascade Lake and later, AMD Zen 4 and later)
    "avx_vnni": True,       # AVX-VNNI (Alder Lake, Sierra Forest...)
    "avx512": False,        # AVX-512BW without VNNI (Skylake-SP): vpmaddubsw saturates
    "avx2": False,          # AVX2 only (Haswell..., AMD Zen 1-3): vpmaddubsw saturates
    "arm_dotprod": True,    # ARMv8.2 SDOT/UDOT
    "arm_neon": False,
    "unknown": False,
}
# Node Feature Discovery labels that guarantee an exact (non-saturating) int8 path on x86-64.
NFD_VNNI_LABELS = (
    "feature.node.kubernetes.io/cpu-cpuid.AVX512VNNI",
    "feature.node.kubernetes.io/cpu-cpuid.AVXVNNI",
)


@dataclass(frozen=True)
class CpuInfo:
    """The CPU this process runs on, as far as int8 inference is concerned.

    Attributes:
        model: Marketing name (``Intel(R) Xeon(R) Platinum 8375C``, ``AMD EPYC 7B13``...).
        arch: ``x86_64``, ``aarch64``...
        int8_isa: Best int8 instruction set (a key of ``INT8_ISAS``).
        flags: The int8-relevant CPU flags found.
    """

    model: str
    arch: str
    int8_isa: str
    flags: tuple[str, ...] = ()

    @property
    def exact_u8s8(self) -> bool:
        """True when full-range int8 weights cannot saturate the uint8 x int8 kernels here."""
        return INT8_ISAS.get(self.int8_isa, False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (recorded in ``io_spec.json``, reports and benchmark output)."""
        data = asdict(self)
        data["flags"] = list(self.flags)
        data["exact_u8s8"] = self.exact_u8s8
        return data


_RELEVANT_FLAGS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp")
# The best instruction set a flag proves, best first (the order of ``INT8_ISAS``).
_ISA_BY_FLAG = (("amx_int8", "amx"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"), ("avx512bw", "avx512"),
                ("avx2", "avx2"), ("asimddp", "arm_dotprod"), ("asimd", "arm_neon"))


def parse_cpuinfo(text: str, arch: str) -> CpuInfo:
    """Build a :class:`CpuInfo` from the text of ``/proc/cpuinfo`` (first processor block).

    Args:
        text: File contents.
        arch: Machine architecture (``platform.machine()``).

    Returns:
        The parsed description; ``int8_isa`` ``unknown`` when no known flag is present.
    """
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    if arch in ("aarch64", "arm64") and not model:
        model = "ARM CPU"
    found = tuple(f for f in _RELEVANT_FLAGS if f in flags)
    isa = next((name for flag, name in _ISA_BY_FLAG if flag in flags), "unknown")
    return CpuInfo(model=model or platform.processor() or "unknown", arch=arch, int8_isa=isa, flags=found)


def detect_cpu() -> CpuInfo:
    """Describe this machine's CPU (``/proc/cpuinfo`` on Linux; model name only elsewhere)."""
    arch = platform.machine() or "unknown"
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, arch)


def benchmark_host() -> dict[str, str]:
    """``cpu_model`` and ``cpu_int8_isa`` for a benchmark's JSON: int8 figures depend on the CPU."""
    cpu = detect_cpu()
    return {"cpu_model": cpu.model, "cpu_int8_isa": cpu.int8_isa}
