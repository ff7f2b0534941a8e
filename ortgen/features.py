"""Features: a model's final hidden states (after ln_f) for texts, as transformers'
`pipeline("feature-extraction")` returns them, optionally pooled (mean over the real tokens, or the
last real token) and L2-normalised. They come from the decoder graph's `last_hidden_state` output
through the decode state, so batches need no care: each row's tokens are cut from its padding."""

from __future__ import annotations

import numpy as np

from ortgen.decode_state import DecodeState
from ortgen.errors import ContextLengthError, InvalidOptionError

POOLINGS = ("none", "mean", "last")  # per token [T, D] / mask-aware mean [D] / last real token [D]
BATCH = 8  # texts per graph run


def embed(generator, texts: str | list[str], pooling: str = "none", normalize: bool = False):
    """`texts` through a `Generator`'s model. One text → [T, D] (pooling "none") or [D]; a list →
    a list of [T_i, D] arrays ("none") or one [N, D] array. float32."""
    if pooling not in POOLINGS:
        raise InvalidOptionError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    batched = not isinstance(texts, str)
    prompts = [_tokens(generator, text) for text in (texts if batched else [texts])]
    rows = []  # [T_i, D] each
    for start in range(0, len(prompts), BATCH):
        chunk = prompts[start : start + BATCH]
        hidden = DecodeState.for_model(generator.model).prefill(chunk, hidden=True)  # [n, T, D]
        rows += [h[h.shape[0] - len(p) :] for h, p in zip(hidden, chunk, strict=True)]
    pooled = [pool(r, pooling, normalize) for r in rows]
    if not batched:
        return pooled[0]
    return pooled if pooling == "none" else np.stack(pooled)


def pool(hidden: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    """One text's hidden states [T, D] → [T, D] ("none") or [D]; L2-normalised on request."""
    out = {"none": hidden, "mean": hidden.mean(axis=0), "last": hidden[-1]}[pooling]
    if normalize:
        norm = np.linalg.norm(out, axis=-1, keepdims=True)
        out = out / np.maximum(norm, np.float32(1e-12))  # torch.nn.functional.normalize's eps
    return out.astype(np.float32, copy=False)


def _tokens(generator, text: str) -> list[int]:
    ids = generator.encode(text)
    if not ids:
        raise InvalidOptionError("a text to embed is empty: give at least one token of text")
    limit = generator.manifest.max_positions
    if len(ids) > limit:
        raise ContextLengthError(
            f"a text of {len(ids)} tokens exceeds the model's context of {limit} tokens: "
            "split it into shorter texts"
        )
    return ids
