"""The user-facing Generator: loads a model folder and runs the prefill / decode loop over ONNX
Runtime. The only module that calls `session.run`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ortgen import kv_cache
from ortgen.errors import ContextLengthError, InvalidOptionError
from ortgen.manifest import Manifest, read_manifest
from ortgen.options import GenerationOptions, defaults_from_folder
from ortgen.sampling import greedy, logits_to_probs, sample
from ortgen.session import create_session
from ortgen.tokenizer import TextStream, Tokenizer


class Generator:
    """Text generation from one exported model folder (GPT-2 or GPT-Neo), without torch."""

    def __init__(
        self,
        manifest: Manifest,
        session: Any,
        tokenizer: Tokenizer,
        defaults: GenerationOptions,
    ) -> None:
        self.manifest = manifest
        self.tokenizer = tokenizer
        self.defaults = defaults
        self._session = session
        self._past_names = kv_cache.past_names(manifest)
        self._outputs = [manifest.tensors.logits, *kv_cache.present_names(manifest)]
        eos = manifest.eos_token_id
        self.pad_id = eos if eos is not None else 0  # any id works: pads are masked out

    @classmethod
    def from_dir(
        cls, path: str | Path, device: str = "cpu", threads: int | None = None
    ) -> Generator:
        """Load `path` (written by `ortgen export`) on `device` ("cpu" or "cuda")."""
        folder = Path(path)
        manifest = read_manifest(folder)
        session = create_session(folder / manifest.model_file, device=device, threads=threads)
        return cls(manifest, session, Tokenizer.from_dir(folder), defaults_from_folder(folder))

    # ---- public API -------------------------------------------------------------------------

    def generate_ids(
        self, prompt_ids: list[int] | list[list[int]], **options: Any
    ) -> list[int] | list[list[int]]:
        """New token ids (EOS included when reached, as transformers does); a list of prompts
        gives a list of results, generated together as one left-padded batch."""
        single = not prompt_ids or not isinstance(prompt_ids[0], list | tuple)
        prompts = [list(prompt_ids)] if single else [list(p) for p in prompt_ids]
        outputs: list[list[int]] = [[] for _ in prompts]
        for next_ids, active in self._steps(prompts, self.options(**options)):
            for row in np.flatnonzero(active):
                outputs[row].append(int(next_ids[row]))
        return outputs[0] if single else outputs

    def generate(self, prompt: str | list[str], **options: Any) -> str | list[str]:
        """The continuation of `prompt` (not including it); a list of prompts gives a list."""
        if isinstance(prompt, str):
            return "".join(self.stream(prompt, **options))
        rows = self.generate_ids([self.encode(p) for p in prompt], **options)
        return [self.tokenizer.decode(ids) for ids in rows]

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """Text pieces as they are produced; they join to exactly what `generate` returns."""
        text = TextStream(self.tokenizer)
        for next_ids, _ in self._steps([self.encode(prompt)], self.options(**options)):
            piece = text.push(int(next_ids[0]))
            if piece:
                yield piece
        rest = text.finish()
        if rest:
            yield rest

    def options(self, **overrides: Any) -> GenerationOptions:
        """The folder's defaults with `overrides` applied and validated."""
        return self.defaults.with_overrides(**overrides)

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    # ---- the loop ---------------------------------------------------------------------------

    def _steps(
        self, prompts: list[list[int]], opts: GenerationOptions
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (next ids [B], rows still active [B]) once per generated position."""
        self._check_context(prompts, opts)
        rng = np.random.default_rng(opts.seed)
        stop_ids = self._stop_ids(opts)
        ids, mask = kv_cache.left_pad(prompts, self.pad_id)  # [B, T], [B, T]
        positions = kv_cache.prefill_positions(mask)  # [B, T]
        past = kv_cache.empty_past(self.manifest, len(prompts))  # 2L × [B, H, 0, D]
        active = np.ones(len(prompts), dtype=bool)  # [B]
        for step in range(opts.max_new_tokens):
            logits, past = self.forward(ids, mask, positions, past)  # [B, T, V]
            next_ids = self._choose(logits[:, -1, :], opts, rng)  # [B]
            yield next_ids, active
            active = active & ~np.isin(next_ids, stop_ids)
            if not active.any() or step == opts.max_new_tokens - 1:
                return
            ids = np.where(active, next_ids, self.pad_id)[:, None]  # [B, 1]
            mask = kv_cache.extend_mask(mask)  # [B, P + 1]
            positions = kv_cache.next_positions(mask)  # [B, 1]

    def forward(
        self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One graph run. ids, positions: [B, T]; mask: [B, P + T]; past: 2L × [B, H, P, D]
        → logits [B, T, V], presents 2L × [B, H, P + T, D]."""
        names = self.manifest.tensors
        feeds = {names.input_ids: ids, names.attention_mask: mask, names.position_ids: positions}
        feeds.update(zip(self._past_names, past, strict=True))
        logits, *present = self._session.run(self._outputs, feeds)
        return logits, present

    @staticmethod
    def _choose(
        logits: np.ndarray, opts: GenerationOptions, rng: np.random.Generator
    ) -> np.ndarray:
        if not opts.do_sample:
            return greedy(logits)
        return sample(logits_to_probs(logits, opts.temperature, opts.top_k, opts.top_p), rng)

    def _stop_ids(self, opts: GenerationOptions) -> np.ndarray:
        if opts.ignore_eos:
            return np.empty(0, dtype=np.int64)
        if opts.eos_token_id is not None:
            return np.asarray(opts.eos_token_id, dtype=np.int64)
        eos = self.manifest.eos_token_id
        return np.asarray([] if eos is None else [eos], dtype=np.int64)

    def _check_context(self, prompts: list[list[int]], opts: GenerationOptions) -> None:
        longest = max(len(p) for p in prompts)
        if longest == 0:
            raise InvalidOptionError("the prompt is empty: give at least one token of text")
        limit = self.manifest.max_positions
        if longest + opts.max_new_tokens > limit:
            raise ContextLengthError(
                f"prompt of {longest} tokens + max_new_tokens {opts.max_new_tokens} exceeds the "
                f"model's context of {limit} tokens: shorten the prompt or lower max_new_tokens"
            )
