"""The HTTP API's request schema: field types, their checks (400s, never 500s), and OpenAI's
completion semantics turned into the engine's generation options."""

from __future__ import annotations

import contextlib
import types
import typing
from typing import Any

from ortgen.generator import Generator
from ortgen.options import GenerationOptions


class ApiError(Exception):
    """A request the server refuses, with its HTTP status and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param = status, param


def check_value(name: str, value: Any, hint: Any) -> Any:
    """`value` if it has the type `hint` describes (bool is not a number; lists for tuples)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            with contextlib.suppress(ApiError):
                return check_value(name, value, arg)
        raise ApiError(400, f"{name} has the wrong type ({value!r})", name)
    if typing.get_origin(hint) is tuple:
        items = [value] if isinstance(value, str) and args[0] is str else value
        if not isinstance(items, list | tuple):
            raise ApiError(400, f"{name} must be a list, got {value!r}", name)
        return tuple(check_value(name, item, args[0]) for item in items)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
    }.get(hint, isinstance(value, hint))
    if not ok:
        raise ApiError(400, f"{name} must be {hint.__name__}, got {value!r}", name)
    return float(value) if hint is float else value


OPTION_TYPES = typing.get_type_hints(GenerationOptions)  # /generate's parameters: declared once

# /v1/completions fields: name → type. OpenAI's own, then the extras such servers take.
COMPLETION_TYPES: dict[str, Any] = {
    "model": str,
    "prompt": str | list,
    "max_tokens": int | None,
    "temperature": float | None,
    "top_p": float | None,
    "n": int | None,
    "stop": tuple[str, ...] | None,
    "seed": int | None,
    "stream": bool | None,
    "stream_options": dict | None,
    "echo": bool | None,
    "user": str | None,
    "presence_penalty": float | None,
    "frequency_penalty": float | None,
    "logprobs": int | None,
    "best_of": int | None,
    "suffix": str | None,
    "logit_bias": dict | None,
    "top_k": int | None,
    "repetition_penalty": float | None,
    "min_tokens": int | None,
}


def fields_of(body: dict, types: dict[str, Any]) -> dict:
    unknown = sorted(set(body) - set(types))
    if unknown:
        raise ApiError(400, f"unknown field(s) {unknown}; known: {sorted(types)}", unknown[0])
    return {name: check_value(name, value, types[name]) for name, value in body.items()}


def refuse_unsupported(f: dict) -> None:
    """Fields GPT-2 cannot honour exactly are refused rather than silently ignored."""
    for name in ("presence_penalty", "frequency_penalty"):
        if f.get(name):
            raise ApiError(400, f"{name} is not supported: use repetition_penalty", name)
    if f.get("logprobs") is not None:
        raise ApiError(400, "logprobs is not supported", "logprobs")
    if f.get("suffix"):
        raise ApiError(400, "suffix (insertion) is not supported by GPT-2", "suffix")
    if f.get("logit_bias"):
        raise ApiError(400, "logit_bias is not supported", "logit_bias")
    if f.get("best_of") not in (None, f.get("n") or 1):
        raise ApiError(400, "best_of must equal n (no server-side ranking)", "best_of")
    if f.get("n", 1) is not None and f.get("n", 1) < 1:
        raise ApiError(400, "n must be ≥ 1", "n")


def prompt_ids(value: Any, generator: Generator) -> list[list[int]]:
    """OpenAI's four prompt forms (text, texts, ids, lists of ids) → token ids per prompt."""
    if isinstance(value, str):
        return [generator.encode(value)]
    if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return [_token_ids(value, generator.manifest.vocab_size)]
    if value and all(isinstance(v, str) for v in value):
        return [generator.encode(v) for v in value]
    if value and all(isinstance(v, list) and v for v in value):
        return [_token_ids(v, generator.manifest.vocab_size) for v in value]
    raise ApiError(400, "prompt must be text, a list of texts, ids or lists of ids", "prompt")


def _token_ids(value: list, vocab_size: int) -> list[int]:
    ids = list(check_value("prompt", value, tuple[int, ...]))
    if not all(0 <= i < vocab_size for i in ids):
        raise ApiError(400, f"prompt token ids must be in [0, {vocab_size})", "prompt")
    return ids


def completion_options(f: dict) -> dict:
    """OpenAI semantics over the engine's options: every value explicit, so the model folder's
    sampling defaults never leak into an OpenAI request."""
    temperature = 1.0 if f.get("temperature") is None else f["temperature"]
    if temperature < 0:
        raise ApiError(400, f"temperature must be ≥ 0, got {temperature}", "temperature")
    n = f.get("n") or 1
    if temperature == 0 and n > 1:
        raise ApiError(400, "n > 1 needs temperature > 0 (greedy gives one answer)", "n")
    return dict(
        max_new_tokens=16 if f.get("max_tokens") is None else f["max_tokens"],
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else 1.0,
        top_p=1.0 if f.get("top_p") is None else f["top_p"],
        top_k=f.get("top_k") or 0,
        repetition_penalty=f.get("repetition_penalty") or 1.0,
        min_new_tokens=f.get("min_tokens") or 0,
        no_repeat_ngram_size=0,
        stop=f.get("stop") or (),
        seed=f.get("seed"),
        num_return_sequences=n,
    )
