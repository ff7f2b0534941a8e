"""Logits processors with transformers' meaning, as pure numpy over one row's token history:
repetition penalty, no-repeat n-grams, and EOS suppression before `min_new_tokens`."""

from __future__ import annotations

import numpy as np


def repetition_penalty(scores: np.ndarray, history: list[int], penalty: float) -> None:
    """In place, for one row ([V]): seen ids' positive scores ÷ penalty, negative ones × penalty."""
    if penalty == 1.0 or not history:
        return
    seen = np.unique(np.asarray(history, dtype=np.int64))
    picked = scores[seen]
    scores[seen] = np.where(picked < 0, picked * penalty, picked / penalty)


def banned_ngram_tokens(history: list[int], size: int) -> list[int]:
    """Ids that would repeat an n-gram of `size` already in `history` (prompt + generated)."""
    if size <= 0 or len(history) + 1 < size:
        return []
    prefix = tuple(history[len(history) - size + 1 :])
    return [
        history[i + size - 1]
        for i in range(len(history) - size + 1)
        if tuple(history[i : i + size - 1]) == prefix
    ]


def no_repeat_ngram(scores: np.ndarray, history: list[int], size: int) -> None:
    """In place, for one row ([V]): forbid ids that would complete a repeated n-gram."""
    banned = banned_ngram_tokens(history, size)
    if banned:
        scores[banned] = -np.inf


def suppress(scores: np.ndarray, ids: np.ndarray) -> None:
    """In place, for one row ([V]): forbid `ids` (EOS before min_new_tokens)."""
    if ids.size:
        scores[ids] = -np.inf
