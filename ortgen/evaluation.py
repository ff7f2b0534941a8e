"""Perplexity of a text under a model folder, with a sliding window that honours the context limit,
so users can compare precisions on their own text."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ortgen.decode_state import DecodeState
from ortgen.errors import InvalidOptionError
from ortgen.generator import Generator


@dataclass(frozen=True)
class Evaluation:
    perplexity: float  # exp(mean negative log-likelihood per predicted token)
    tokens: int  # tokens predicted (the text's tokens minus the first)
    windows: int  # forward passes
    seconds: float  # wall time of the forward passes
    tokens_per_s: float  # text tokens processed per second (prefill throughput)


def log_likelihoods(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) per position. logits: [T, V]; targets: [T] → [T] float64."""
    scores = logits.astype(np.float64)
    top = scores.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(scores - top).sum(axis=-1)) + top[:, 0]  # [T]
    return scores[np.arange(len(targets)), targets] - log_norm


def windows(length: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) per pass: every token but the first is scored once,
    each window advancing by `stride` and keeping `window - stride` or more tokens of context."""
    spans, scored, end = [], 1, min(window, length)
    while True:
        spans.append((max(0, end - window), end, scored))
        if end == length:
            return spans
        scored, end = end, min(end + stride, length)


def evaluate(
    generator: Generator, ids: list[int], window: int | None = None, stride: int | None = None
) -> Evaluation:
    """Perplexity of `ids` (at least two tokens) with windows of `window` tokens (default: the
    model's context) advancing by `stride` (default: half a window)."""
    window = window or generator.manifest.max_positions
    stride = stride or max(1, window // 2)
    if not 2 <= window <= generator.manifest.max_positions:
        raise InvalidOptionError(
            f"window must be in [2, {generator.manifest.max_positions}] (the model's context), "
            f"got {window}"
        )
    if not 1 <= stride < window:
        raise InvalidOptionError(f"stride must be in [1, window - 1 = {window - 1}], got {stride}")
    if len(ids) < 2:
        raise InvalidOptionError("the text must hold at least two tokens to measure perplexity")
    total, count, spans = 0.0, 0, windows(len(ids), window, stride)
    start = time.perf_counter()
    for begin, end, scored_from in spans:
        chunk = ids[begin:end]
        state = DecodeState.for_model(generator.model)
        logits = state.prefill([chunk], all_logits=True)[0]  # [L, V]
        first = scored_from - begin  # position of the first token to score within the chunk
        targets = np.asarray(chunk[first:], dtype=np.int64)
        scored = log_likelihoods(logits[first - 1 : -1], targets)  # [L - first]
        total += float(scored.sum())
        count += len(scored)
    seconds = time.perf_counter() - start
    processed = sum(end - begin for begin, end, _ in spans)
    return Evaluation(
        float(np.exp(-total / count)), count, len(spans), seconds, processed / seconds
    )
