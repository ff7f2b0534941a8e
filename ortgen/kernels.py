"""ortgen's own CPU kernels: an ONNX Runtime custom-op library (native/, compiled at install
when a C compiler is there) with `ortgen.Q8MatMul`, the int8 block matmul of the in-place graph's
native variant. Found and checked here; `session` registers it."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os

DOMAIN = "ortgen"  # custom-op domain of the native graph's nodes
SWITCH = "ORTGEN_NATIVE"  # set to 0: never pick the native graph by default


def library() -> str | None:
    """Path of the kernel library when it is built, this CPU runs it (AVX-512 VNNI) and SWITCH
    is not 0; else None."""
    return None if os.environ.get(SWITCH, "1") == "0" else _built()


def missing() -> str:
    """Why library() is None, as one line that says what to do."""
    if os.environ.get(SWITCH, "1") == "0":
        return (
            f"ortgen's native kernels are switched off ({SWITCH}=0): unset it, or use graph inplace"
        )
    if importlib.util.find_spec("ortgen._kernels") is None:
        return (
            "ortgen's native kernels are not built (no C compiler at install): install gcc and "
            "reinstall ortgen, or use graph inplace"
        )
    return "this CPU lacks AVX-512 VNNI, which ortgen's native kernels need: use graph inplace"


@functools.cache
def _built() -> str | None:
    spec = importlib.util.find_spec("ortgen._kernels")
    if spec is None or not spec.origin:
        return None
    try:
        supported = ctypes.CDLL(spec.origin).ortgen_kernels_supported()
    except (OSError, AttributeError):
        return None
    return spec.origin if supported == 1 else None
