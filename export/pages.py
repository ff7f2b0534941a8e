"""Letting go of checkpoint pages once read. transformers maps safetensors checkpoints into memory:
every weight the graph builder reads stays resident in the process (the file's pages count in its
RSS) until the whole model is freed, so the build would briefly hold the weights twice — mapped
and in the graph. `drop` hands the pages of weights already written into the graph back to the
kernel (Linux `madvise(MADV_DONTNEED)`); they stay in the page cache and would be read again from
the file if touched. Only pages of a mapped checkpoint file are dropped, never anonymous memory
(where it would erase data); elsewhere, and on other systems, it does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import sys
from collections.abc import Iterable

import numpy as np

_MADV_DONTNEED = 4
_SUFFIX = ".safetensors"


class CheckpointPages:
    """The address ranges of the mapped checkpoint files, read once from /proc/self/maps."""

    def __init__(self) -> None:
        self._ranges: list[tuple[int, int]] = []
        self._madvise = None
        if not sys.platform.startswith("linux"):
            return
        try:
            with open("/proc/self/maps", encoding="utf-8") as maps:
                for line in maps:
                    fields = line.split()
                    if len(fields) >= 6 and fields[-1].endswith(_SUFFIX):
                        low, high = (int(x, 16) for x in fields[0].split("-"))
                        self._ranges.append((low, high))
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        except OSError:
            self._ranges = []
            return
        self._madvise = libc.madvise
        self._madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

    def drop(self, arrays: Iterable[np.ndarray]) -> None:
        """Give back the whole pages of `arrays` that lie in a mapped checkpoint file. Call it
        only once nothing reads them any more (reading again is correct, only slower)."""
        if not self._ranges:
            return
        for array in arrays:
            start = array.__array_interface__["data"][0]
            end = start + array.nbytes
            if not any(low <= start and end <= high for low, high in self._ranges):
                continue
            first, last = -(-start // mmap.PAGESIZE), end // mmap.PAGESIZE
            if last > first:
                pages = (last - first) * mmap.PAGESIZE
                self._madvise(first * mmap.PAGESIZE, pages, _MADV_DONTNEED)
