"""Logits processors with transformers' meaning, as pure numpy over one row: repetition penalty,
no-repeat n-grams (a reference function and the incremental table the loop uses), and EOS
suppression before `min_new_tokens`."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


def repetition_penalty(scores: np.ndarray, seen: np.ndarray, penalty: float) -> None:
    """In place, for one row ([V]): seen ids' positive scores ÷ penalty, negative ones × penalty.
    seen: unique ids of the prompt and the output so far."""
    if penalty == 1.0 or not seen.size:
        return
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


class NgramTable:
    """`banned_ngram_tokens` kept up to date token by token: (n−1)-gram → ids that followed it."""

    def __init__(self, history: list[int], size: int) -> None:
        self.size = size
        self._next: defaultdict[tuple[int, ...], list[int]] = defaultdict(list)
        self._history: list[int] = []
        for token in history:
            self.push(token)

    def push(self, token: int) -> None:
        self._history.append(token)
        if len(self._history) >= self.size:
            gram = self._history[len(self._history) - self.size :]
            self._next[tuple(gram[:-1])].append(gram[-1])

    def banned(self) -> list[int]:
        if len(self._history) + 1 < self.size:
            return []
        return self._next.get(tuple(self._history[len(self._history) - self.size + 1 :]), [])


def suppress(scores: np.ndarray, ids: np.ndarray | list[int]) -> None:
    """In place, for one row ([V]): forbid `ids` (EOS before min_new_tokens, banned n-grams)."""
    if len(ids):
        scores[ids] = -np.inf
