"""KV-cache and mask bookkeeping for the decode loop, as plain numpy: the first step's empty past,
left-padded batches, per-row positions, and the hand-over of `present.*` to `past_key_values.*`."""

from __future__ import annotations

import numpy as np

from ortgen.manifest import Manifest


def past_names(manifest: Manifest) -> list[str]:
    """Graph input names of the cache, in the order `present_names` returns outputs."""
    return _per_layer(manifest, manifest.tensors.past_key, manifest.tensors.past_value)


def present_names(manifest: Manifest) -> list[str]:
    return _per_layer(manifest, manifest.tensors.present_key, manifest.tensors.present_value)


def _per_layer(manifest: Manifest, key: str, value: str) -> list[str]:
    """[key 0, value 0, key 1, value 1, …] from `{i}` name templates."""
    return [name.format(i=i) for i in range(manifest.num_layers) for name in (key, value)]


def empty_past(manifest: Manifest, batch: int) -> list[np.ndarray]:
    """Zero-length cache for the first step: real [B, H, 0, D] arrays, never uninitialised."""
    shape = (batch, manifest.num_heads, 0, manifest.head_dim)
    return [np.zeros(shape, dtype=manifest.kv_dtype) for _ in range(2 * manifest.num_layers)]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad prompts to one length. → input_ids [B, T], attention_mask [B, T] (int64)."""
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = prompt
        mask[row, width - len(prompt) :] = 1
    return ids, mask


def prefill_positions(mask: np.ndarray) -> np.ndarray:
    """Positions count real tokens only: cumsum(mask) − 1; pads get 1, as transformers does.

    mask: [B, T] → [B, T] int64.
    """
    positions = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 1, positions).astype(np.int64)


def next_positions(mask: np.ndarray) -> np.ndarray:
    """Position of the token just appended, per row. mask: [B, P + 1] (extended) → [B, 1]."""
    return (mask.sum(axis=-1, keepdims=True) - 1).astype(np.int64)


def extend_mask(mask: np.ndarray) -> np.ndarray:
    """Attend to the token being fed next. mask: [B, P] → [B, P + 1]."""
    return np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=mask.dtype)], axis=-1)
