"""What this machine's CPU offers, read from /proc/cpuinfo (independently of ortgen's own check)."""

from __future__ import annotations

from pathlib import Path

NATIVE_FLAGS = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}


def runs_native_kernels() -> bool:
    """Whether ortgen's native kernels (AVX-512 VNNI) can run here: then they must be built."""
    info = Path("/proc/cpuinfo")
    if not info.is_file():
        return False
    for line in info.read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) >= NATIVE_FLAGS
    return False
