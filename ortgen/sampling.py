"""Next-token choice as pure numpy functions: logits → probabilities (temperature → top-k → top-p,
transformers' order and meaning) → one sampled id per row. No ORT, no state beyond the RNG."""

from __future__ import annotations

import numpy as np


def greedy(logits: np.ndarray) -> np.ndarray:
    """Highest-scoring id per row. logits: [B, V] → [B] int64."""
    return np.argmax(logits, axis=-1).astype(np.int64)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64; -inf scores get probability 0. scores: [B, V]."""
    shifted = scores - np.max(scores, axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def apply_top_k(scores: np.ndarray, top_k: int | None) -> np.ndarray:
    """Keep the k best scores per row (ties with the k-th are kept, as transformers does)."""
    if not top_k or top_k >= scores.shape[-1]:
        return scores
    kth = np.partition(scores, -top_k, axis=-1)[:, -top_k][:, None]  # [B, 1]
    return np.where(scores < kth, -np.inf, scores)


def apply_top_p(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Keep the smallest set of most likely ids whose mass reaches top_p (never empty)."""
    if top_p >= 1.0:
        return probs
    order = np.argsort(-probs, axis=-1, kind="stable")  # [B, V] most likely first
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    mass_before = np.cumsum(sorted_probs, axis=-1) - sorted_probs  # [B, V]
    drop_sorted = mass_before >= top_p  # the first id always has mass_before == 0, so it stays
    drop = np.empty_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    kept = np.where(drop, 0.0, probs)
    return kept / kept.sum(axis=-1, keepdims=True)


def logits_to_probs(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> np.ndarray:
    """Sampling distribution per row. logits: [B, V] → probs [B, V] float64, rows summing to 1."""
    scores = logits.astype(np.float64) / temperature
    scores = apply_top_k(scores, top_k)
    return apply_top_p(softmax(scores), top_p)


def sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one id per row by inverting the CDF. probs: [B, V] → [B] int64."""
    cdf = np.cumsum(probs, axis=-1)  # [B, V]
    draws = (
        rng.random(probs.shape[0]) * cdf[:, -1]
    )  # [B], scaled so float rounding cannot overshoot
    ids = [np.searchsorted(row, u, side="right") for row, u in zip(cdf, draws, strict=True)]
    return np.minimum(np.asarray(ids, dtype=np.int64), probs.shape[-1] - 1)
