"""Next-token choice as pure numpy functions: logits → probabilities (temperature → top-k → top-p,
transformers' order and meaning) → one sampled id. No ORT, no state beyond the RNG.

`logits_to_probs` + `sample` are the reference over the whole vocabulary; `sample_row` draws the
same id from the same RNG state but touches the full vocabulary only with a few vectorised passes:
it finds the warped distribution's support (the ids top-k and top-p keep) by thresholds that
provably contain it, and sorts only that support."""

from __future__ import annotations

import math

import numpy as np

from ortgen import kernels

_SLACK = 1.0  # nats added to the top-p cut-off bound, so float rounding can never bite


def greedy(logits: np.ndarray) -> np.ndarray:
    """Highest-scoring id per row. logits: [B, V] → [B] int64."""
    return np.argmax(logits, axis=-1).astype(np.int64)


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax (in the scores' dtype); -inf scores get probability 0. scores: [B, V]."""
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
    """Sampling distribution per row. logits: [B, V] → probs [B, V] float32 (as transformers
    computes it), rows summing to 1."""
    scores = logits.astype(np.float32) / np.float32(temperature)
    scores = apply_top_k(scores, top_k)
    return apply_top_p(softmax(scores), top_p)


def sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one id per row by inverting the CDF. probs: [B, V] → [B] int64."""
    cdf = np.cumsum(probs, axis=-1)  # [B, V]
    # [B], float32 like the sums and scaled by their total: rounding cannot overshoot
    draws = rng.random(probs.shape[0]).astype(np.float32) * cdf[:, -1]
    ids = [np.searchsorted(row, u, side="right") for row, u in zip(cdf, draws, strict=True)]
    return np.minimum(np.asarray(ids, dtype=np.int64), probs.shape[-1] - 1)


def sample_row(
    logits: np.ndarray,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float = 1.0,
) -> int:
    """One id from one row's logits ([V]); the same id `sample(logits_to_probs(…))` draws."""
    ids, probs = support(logits, temperature, top_k, top_p)  # ids ascending
    native = kernels.sampling()
    draw = np.float32(rng.random())  # float32 like the sums, whatever numpy's promotion rules
    if native is None:
        cdf = np.cumsum(probs)
        pick = np.searchsorted(cdf, draw * cdf[-1], side="right")
    else:  # the same float32 running sums, without the array
        pick = native.cdf_search(probs, draw * native.cdf_last(probs))
    return int(ids[min(pick, len(ids) - 1)])


def support(
    logits: np.ndarray, temperature: float = 1.0, top_k: int | None = None, top_p: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """The ids the warped distribution keeps (ascending) and their probabilities, equal to the
    non-zero entries of `logits_to_probs` for this row. logits: [V]."""
    scores = np.asarray(logits, np.float32) / np.float32(temperature)  # [V]
    vocab = scores.shape[0]
    top = scores.max()
    if top_k and top_k < vocab:
        ids = np.flatnonzero(scores >= _kth_largest(scores, top_k, top))
        weights = np.exp(scores[ids] - top)
        total = weights.sum()
    else:
        everything = np.exp(scores - top)  # [V]: the normaliser needs every id
        total = everything.sum()
        ids, weights = _nucleus_candidates(scores, everything, total, top, top_p)
    probs = weights / total
    if top_p >= 1.0:
        return ids, probs
    keep = _nucleus(probs, top_p)
    kept = probs[keep]
    return ids[keep], kept / kept.sum()


def _nucleus(probs: np.ndarray, top_p: float) -> np.ndarray:
    """Positions (ascending) `apply_top_p` keeps, without its stable argsort: sorted values give
    the same running mass whatever the order among equal values, so the kept count k and the
    k-th value v decide; of the ids equal to v, a stable sort keeps the lowest first. The native
    helper computes the same positions (radix sort, same float32 sums) where it is built."""
    native = kernels.sampling()
    if native is not None and probs.dtype == np.float32:
        return native.nucleus(probs, np.float32(top_p))
    return _nucleus_numpy(probs, np.float32(top_p))


def _nucleus_numpy(probs: np.ndarray, top_p: np.float32) -> np.ndarray:
    ranked = np.sort(probs)[::-1]  # most likely first
    kept = int(np.count_nonzero(np.cumsum(ranked) - ranked < top_p))
    last = ranked[kept - 1]
    keep = probs > last
    ties = np.flatnonzero(probs == last)[: kept - np.count_nonzero(keep)]
    keep[ties] = True
    return np.flatnonzero(keep)


def _kth_largest(scores: np.ndarray, k: int, top: float) -> float:
    """The k-th largest score, partitioning only a threshold set known to hold the top k (the
    native helper selects it by radix where it is built: the same value)."""
    native = kernels.sampling()
    if native is not None and scores.dtype == np.float32 and scores.flags.c_contiguous:
        return native.kth_largest(scores, k)
    for gap in (4.0, 16.0):
        near = scores[scores >= top - gap]
        if len(near) >= k:  # the k largest all lie in `near`
            return float(np.partition(near, len(near) - k)[len(near) - k])
    return float(np.partition(scores, len(scores) - k)[len(scores) - k])


def _nucleus_candidates(scores, weights, total: float, top: float, top_p: float):
    """Ids (ascending) that contain the top-p nucleus, with their weights. Every id below
    top − ln(V / (1 − top_p)) has probability < (1 − top_p) / V, so together those hold less
    than 1 − top_p: the nucleus cannot reach them once the rest holds ≥ top_p (checked)."""
    if top_p < 1.0:
        cut = top - (math.log(len(scores) / (1.0 - top_p)) + _SLACK)
        ids = np.flatnonzero(scores >= cut)
        if len(ids) == len(scores):  # a flat distribution: every id is a candidate
            return ids, weights
        candidates = weights[ids]
        if candidates.sum() / total >= top_p:
            return ids, candidates
    ids = np.flatnonzero(weights > 0)
    return ids, weights[ids]
