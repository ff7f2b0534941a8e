"""What this machine's CPU offers, read from /proc/cpuinfo (independently of ortgen's own check)."""

from __future__ import annotations

from pathlib import Path

# Either set runs them: AVX-512 VNNI (the fast build), or AVX2 with FMA and F16C (native/isa.h)
NATIVE_FLAGS = (
    {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"},
    {"avx2", "fma", "f16c"},
)


def flags() -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is absent)."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return set()
    for line in info.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def has_amx() -> bool:
    """Whether the AVX-512 build runs here with AMX-INT8 tiles (Intel Xeon 4th generation on)."""
    return flags() >= NATIVE_FLAGS[0] | {"amx_tile", "amx_int8"}


def runs_native_kernels() -> bool:
    """Whether ortgen's native kernels (AVX-512 VNNI or AVX2) can run here: then they must be
    built."""
    return native_build() is not None


def native_build() -> str | None:
    """The kernel build this CPU should run (kernels.BUILDS): the AVX-512 VNNI one where the CPU
    has it, else the AVX2 one; None where neither runs."""
    have = flags()
    if have >= NATIVE_FLAGS[0]:
        return "ortgen._kernels"
    return "ortgen._kernels_avx2" if have >= NATIVE_FLAGS[1] else None
