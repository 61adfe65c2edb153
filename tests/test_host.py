"""The host description recorded next to benchmark figures."""

from __future__ import annotations

from pathlib import Path

from gerbang.host import describe_host

X86 = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 207
model name\t: Intel(R) Xeon(R) Processor
stepping\t: 2
cpu MHz\t\t: 2300.000
flags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni

processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
"""

# A Raspberry Pi 4: no clock line, Arm feature names, the board named in the last block.
PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU part\t: 0xd08

processor\t: 1
Features\t: fp asimd evtstrm crc32 cpuid
CPU part\t: 0xd08

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""


def test_x86_vm_is_told_apart_by_family_model_and_extensions(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(X86)
    host = describe_host(cpuinfo)
    assert host["cpu_model"] == "Intel(R) Xeon(R) Processor"
    assert host["cpu_id"] == "family 6 model 207 stepping 2"
    assert host["cpu_mhz"] == 2300.0
    assert host["vector_extensions"] == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni"]
    assert host["board"] is None


def test_raspberry_pi_reports_its_board_and_arm_core(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(PI4)
    host = describe_host(cpuinfo)
    assert host["board"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert host["cpu_id"] == "implementer 0x41 part 0xd08"
    assert host["vector_extensions"] == ["asimd"]
    assert host["cpu_mhz"] is None


def test_unreadable_cpuinfo_still_describes_the_host(tmp_path: Path) -> None:
    host = describe_host(tmp_path / "missing")
    assert host["cpus"] and host["machine"]
    assert host["cpu_id"] is None and host["vector_extensions"] == []
