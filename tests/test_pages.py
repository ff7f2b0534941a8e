"""The export lets go of checkpoint pages it has read (export/pages.py): mapped safetensors pages
leave the resident set, the values read again are unchanged, anonymous memory is never touched."""

from __future__ import annotations

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ortgen_export.pages import CheckpointPages

MB = 2**20


def resident_file_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as status:
        line = next(line for line in status if line.startswith("RssFile:"))
    return int(line.split()[1]) / 1024


def test_dropped_checkpoint_pages_leave_memory_and_read_back_unchanged(tmp_path):
    weights = {"w": torch.arange(16 * MB, dtype=torch.float32).reshape(4096, -1)}  # 64 MB
    save_file(weights, tmp_path / "model.safetensors")
    with safe_open(tmp_path / "model.safetensors", framework="pt") as file:
        mapped = file.get_slice("w")[...]  # as transformers loads it: backed by the file's pages
    array = mapped.numpy()
    expected = float(array.sum(dtype=np.float64))  # every page read: resident now
    before = resident_file_mb()
    anonymous = np.arange(16 * MB, dtype=np.float32)
    CheckpointPages().drop([array, anonymous])
    assert before - resident_file_mb() > 48  # most of the 64 MB left the resident set
    assert float(array.sum(dtype=np.float64)) == expected  # read again from the file
    assert np.array_equal(anonymous, np.arange(16 * MB, dtype=np.float32))  # untouched
