"""`ortgen bench MODEL_DIR`: prefill and decode speed of one model folder, with per-token latency
percentiles — what a user needs to size a deployment, measured on their machine."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ortgen.decode_state import DecodeState
from ortgen.errors import InvalidOptionError
from ortgen.generator import Generator


@dataclass(frozen=True)
class Speed:
    prefill_tokens_per_s: float  # prompt tokens per second (batch × prompt / prefill time)
    decode_tokens_per_s: float  # generated tokens per second after the first (all rows)
    time_to_first_token_ms: float  # median prefill latency
    token_latency_ms: dict[str, float]  # decode step latency percentiles: p50, p90, p99


def measure(
    generator: Generator, prompt_tokens: int, new_tokens: int, batch: int = 1, rounds: int = 3
) -> Speed:
    """Median over `rounds` runs (after one warm-up) of a greedy prefill + decode loop."""
    limit = generator.manifest.max_positions
    if prompt_tokens < 1 or new_tokens < 2 or prompt_tokens + new_tokens > limit:
        raise InvalidOptionError(
            f"need prompt_tokens ≥ 1, new_tokens ≥ 2 and their sum ≤ {limit} (the context)"
        )
    if batch < 1 or rounds < 1:
        raise InvalidOptionError("batch and rounds must be ≥ 1")
    span = max(1, min(1000, generator.manifest.vocab_size - 10))  # ids inside any vocabulary
    prompts = [
        [(7 * i + 131 * row) % span + 10 for i in range(prompt_tokens)] for row in range(batch)
    ]
    _loop(generator, prompts, 4)  # warm-up
    runs = [_loop(generator, prompts, new_tokens) for _ in range(rounds)]
    prefill = float(np.median([r[0] for r in runs]))
    steps = np.concatenate([r[1] for r in runs])  # [rounds × (new - 1)] seconds
    return Speed(
        prefill_tokens_per_s=batch * prompt_tokens / prefill,
        decode_tokens_per_s=batch / float(np.median(steps)),
        time_to_first_token_ms=prefill * 1e3,
        token_latency_ms={f"p{q}": float(np.percentile(steps, q) * 1e3) for q in (50, 90, 99)},
    )


def _loop(generator: Generator, prompts: list[list[int]], new: int) -> tuple[float, np.ndarray]:
    """Prefill time and each decode step's time, greedy, through one decode state."""
    state = DecodeState.for_model(generator.model)
    start = time.perf_counter()
    logits = state.prefill(prompts)  # [B, V]
    prefill = time.perf_counter() - start
    steps = []
    for _ in range(new - 1):
        start = time.perf_counter()
        logits = state.step(logits.argmax(-1))
        steps.append(time.perf_counter() - start)
    return prefill, np.asarray(steps)
