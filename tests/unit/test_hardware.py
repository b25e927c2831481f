"""CPU int8 capability detection and the int8 recipe each ``cpu_isa`` choice gives."""

from __future__ import annotations

import pytest

from transferkit.errors import ConfigError
from transferkit.export import ExportConfig
from transferkit.export.int8 import choose_int8_recipe
from transferkit.hardware import NFD_VNNI_LABELS, detect_cpu, parse_cpuinfo

EPYC_ROME = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B12
flags\t\t: fpu vme sse sse2 ssse3 sse4_1 sse4_2 avx f16c avx2 bmi2 sha_ni
"""
CASCADE_LAKE = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8280 CPU @ 2.70GHz
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512vl avx512_vnni
"""
SKYLAKE_SP = "model name\t: Intel(R) Xeon(R) Gold 6148\nflags\t: avx2 avx512f avx512bw\n"
SAPPHIRE_RAPIDS = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t: avx2 avx512bw avx512_vnni amx_int8\n"
ALDER_LAKE = "model name\t: 12th Gen Intel(R) Core(TM) i7-1260P\nflags\t: avx2 avx_vnni\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes crc32 asimddp sve\nCPU implementer\t: 0x41\n"
OLD_ARM = "processor\t: 0\nFeatures\t: fp asimd\n"


@pytest.mark.parametrize(("text", "arch", "isa", "exact"), [
    (EPYC_ROME, "x86_64", "avx2", False),
    (SKYLAKE_SP, "x86_64", "avx512", False),
    (CASCADE_LAKE, "x86_64", "avx512_vnni", True),
    (SAPPHIRE_RAPIDS, "x86_64", "amx", True),
    (ALDER_LAKE, "x86_64", "avx_vnni", True),
    (GRAVITON3, "aarch64", "arm_dotprod", True),
    (OLD_ARM, "aarch64", "arm_neon", False),
    ("", "x86_64", "unknown", False),
])
def test_int8_isa_from_cpuinfo(text: str, arch: str, isa: str, exact: bool) -> None:
    cpu = parse_cpuinfo(text, arch)
    assert cpu.int8_isa == isa and cpu.exact_u8s8 is exact and cpu.arch == arch
    assert cpu.to_dict()["exact_u8s8"] is exact


def test_model_name_and_flags_are_recorded() -> None:
    cpu = parse_cpuinfo(EPYC_ROME, "x86_64")
    assert cpu.model == "AMD EPYC 7B12" and cpu.flags == ("avx2",)
    assert parse_cpuinfo(GRAVITON3, "aarch64").flags == ("asimd", "asimddp")


def test_this_machine_is_described() -> None:
    cpu = detect_cpu()
    assert cpu.model and cpu.int8_isa in {"amx", "avx512_vnni", "avx_vnni", "avx512", "avx2", "arm_dotprod",
                                          "arm_neon", "unknown"}


def test_portable_is_the_default_on_every_cpu(tmp_path) -> None:
    assert ExportConfig(tmp_path / "m", tmp_path / "d", tmp_path / "o").cpu_isa == "portable"
    for text in (EPYC_ROME, CASCADE_LAKE):
        recipe = choose_int8_recipe("portable", parse_cpuinfo(text, "x86_64"))
        assert recipe.name == "portable" and recipe.reduce_range and recipe.serving_node_labels == ()


def test_native_follows_the_export_node() -> None:
    on_vnni = choose_int8_recipe("native", parse_cpuinfo(CASCADE_LAKE, "x86_64"))
    on_avx2 = choose_int8_recipe("native", parse_cpuinfo(EPYC_ROME, "x86_64"))
    assert (on_vnni.name, on_vnni.reduce_range, on_vnni.requested) == ("vnni", False, "native")
    assert on_vnni.serving_node_labels == NFD_VNNI_LABELS and on_vnni.gate_is_representative
    assert (on_avx2.name, on_avx2.reduce_range) == ("portable", True)


def test_vnni_on_a_cpu_without_vnni_says_the_gate_is_not_representative(caplog) -> None:
    recipe = choose_int8_recipe("vnni", parse_cpuinfo(EPYC_ROME, "x86_64"))
    assert recipe.name == "vnni" and not recipe.reduce_range and not recipe.gate_is_representative
    assert "accuracy gate measures its saturating int8 kernels" in caplog.text
    arm = choose_int8_recipe("vnni", parse_cpuinfo(GRAVITON3, "aarch64"))
    assert arm.serving_node_labels == () and arm.gate_is_representative


def test_unknown_cpu_isa_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"cpu_isa: 'avx9' is not one of portable, native, vnni"):
        ExportConfig(tmp_path / "m", tmp_path / "d", tmp_path / "o", cpu_isa="avx9")
