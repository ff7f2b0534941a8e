"""ortgen's own CPU kernels (native/, compiled at install when a C compiler is there): an ONNX
Runtime custom-op library with `ortgen.Q8MatMul`, the int8-activation block matmul (8- or 4-bit
weights), and `ortgen.CachedAttentionQ8` / `ortgen.CachedAttention` (int8 / float16 KV cache),
the ops of the in-place graph's native variant (`session` registers it), and the sampling helpers
`sampling.py` calls. Found and checked here. SWITCH=0 turns all of it off."""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import os

import numpy as np

DOMAIN = "ortgen"  # custom-op domain of the native graph's nodes
SWITCH = "ORTGEN_NATIVE"  # set to 0: never pick the native graph by default
# CachedAttentionQ8's cache records: D int8 codes, then their float32 scale (ATTN_SCALE_BYTES in
# native/attention.h)
KV_SCALE_BYTES = 4


def library() -> str | None:
    """Path of the kernel library when it is built, this CPU runs it (AVX-512 VNNI) and SWITCH
    is not 0; else None."""
    return None if _off() else _probe()[0]


def missing() -> str:
    """Why library() is None, as one line that says what to do."""
    if _off():
        return f"ortgen's native code is off ({SWITCH}=0): unset it, or pass graph='inplace'"
    return _probe()[1]


def _off() -> bool:
    return os.environ.get(SWITCH, "1") == "0"


# The builds, fastest first: AVX-512 VNNI, then every vector op on pairs of AVX2 vectors
# (native/isa.h). Each holds the same ops and helpers; the first this CPU runs is used.
BUILDS = ("ortgen._kernels", "ortgen._kernels_avx2")


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str, str]:
    """(the loaded library, its path, "") for the first build that loads and this CPU runs; else
    (the first that loads, for its portable sampling helpers, or None; its path or ""; why not).
    The one place the library is opened."""
    fallback: tuple[ctypes.CDLL | None, str, str] | None = None
    for name in BUILDS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            continue
        try:
            lib = ctypes.CDLL(spec.origin)
        except OSError as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            fallback = fallback or (
                None,
                "",
                (
                    f"ortgen's native kernel library {spec.origin} does not load ({reason}): "
                    "reinstall ortgen, or pass graph='inplace'"
                ),
            )
            continue
        try:
            supported = lib.ortgen_kernels_supported()
        except AttributeError as err:
            fallback = fallback or (
                None,
                "",
                (
                    f"ortgen's native kernel library {spec.origin} is incomplete ({err}): "
                    "reinstall ortgen, or pass graph='inplace'"
                ),
            )
            continue
        if supported == 1:
            return lib, spec.origin, ""
        if fallback is None or fallback[0] is None:
            fallback = (
                lib,
                spec.origin,
                "this CPU has neither AVX-512 VNNI nor AVX2 with FMA and F16C, which ortgen's "
                "native kernels need: use graph inplace",
            )
    return fallback or (
        None,
        "",
        (
            "ortgen's native kernels are not built (no C compiler at install): install gcc and "
            "reinstall ortgen, or pass graph='inplace'"
        ),
    )


@functools.cache
def _probe() -> tuple[str | None, str]:
    """(the library's path, "") where it loads and this CPU runs it; else (None, why not)."""
    lib, path, why = _load()
    return (path, "") if lib is not None and not why else (None, why)


class Sampling:
    """The library's sampling helpers (native/nucleus.c): the same ids as sampling.py's numpy
    code, bit for bit for finite scores, faster. Portable C: any CPU runs them."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        f32, i64, ptr = ctypes.c_float, ctypes.c_int64, ctypes.c_void_p
        self._nucleus = lib.ortgen_nucleus
        self._nucleus.argtypes, self._nucleus.restype = [ptr, i64, f32, ptr], i64
        self._last = lib.ortgen_cumsum_last
        self._last.argtypes, self._last.restype = [ptr, i64], f32
        self._search = lib.ortgen_cdf_search
        self._search.argtypes, self._search.restype = [ptr, i64, f32], i64
        self._kth = lib.ortgen_kth_largest
        self._kth.argtypes, self._kth.restype = [ptr, i64, i64, ptr], ctypes.c_int

    def nucleus(self, probs: np.ndarray, top_p: np.float32) -> np.ndarray:
        """sampling._nucleus_numpy(probs, top_p): kept positions, ascending. probs: [n] float32."""
        probs = np.ascontiguousarray(probs, dtype=np.float32)
        out = np.empty(len(probs), np.int64)
        count = self._nucleus(probs.ctypes.data, len(probs), top_p, out.ctypes.data)
        if count < 0:
            raise MemoryError("ortgen's top-p selection is out of memory")
        return out[:count]

    def kth_largest(self, scores: np.ndarray, k: int) -> float:
        """The k-th largest of scores ([n] float32, contiguous, no NaN), 1 ≤ k ≤ n."""
        if not 1 <= k <= len(scores):
            raise ValueError(f"k = {k} for {len(scores)} scores")
        value = ctypes.c_float()
        if self._kth(scores.ctypes.data, len(scores), k, ctypes.byref(value)):
            raise MemoryError("ortgen's top-k selection is out of memory")
        return value.value

    def cdf_last(self, probs: np.ndarray) -> np.float32:
        """numpy.cumsum(probs)[-1]. probs: [n] float32, contiguous."""
        return np.float32(self._last(probs.ctypes.data, len(probs)))

    def cdf_search(self, probs: np.ndarray, u: np.float32) -> int:
        """numpy.searchsorted(numpy.cumsum(probs), u, side="right")."""
        return int(self._search(probs.ctypes.data, len(probs), u))


def sampling() -> Sampling | None:
    """The sampling helpers where the library is built and SWITCH is not 0 (any CPU); else None
    (sampling.py then runs its numpy code: the same ids, slower)."""
    return None if _off() else _sampling()


@functools.cache
def _sampling() -> Sampling | None:
    lib = _load()[0]
    try:
        return Sampling(lib) if lib is not None else None
    except AttributeError:
        return None
