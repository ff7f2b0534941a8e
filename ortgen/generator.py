"""The user-facing Generator: loads a model folder and runs the prefill / decode loop over ONNX
Runtime. The only module that calls `session.run`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ortgen import kv_cache, processors
from ortgen.errors import ContextLengthError, InvalidOptionError, ModelFolderError
from ortgen.manifest import Manifest, read_manifest
from ortgen.options import GenerationOptions, defaults_from_folder
from ortgen.sampling import greedy, logits_to_probs, sample
from ortgen.session import create_session
from ortgen.stopping import Row
from ortgen.tokenizer import Tokenizer

_LAST_ONLY = np.array([1], dtype=np.int64)  # logits_to_keep: the last position
DEFAULT_MODEL = Path(__file__).parent / "models" / "default"  # small int8 GPT-2, see README


def default_model() -> Path:
    if not (DEFAULT_MODEL / "ortgen.json").is_file():
        raise ModelFolderError(
            "this installation has no bundled default model: pass --model / a model folder"
        )
    return DEFAULT_MODEL


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
        cls, path: str | Path | None = None, device: str = "cpu", threads: int | None = None
    ) -> Generator:
        """Load `path` (written by `ortgen export`; default: the bundled model) on `device`
        ("cpu" or "cuda")."""
        folder = Path(path) if path is not None else default_model()
        manifest = read_manifest(folder)
        session = create_session(folder / manifest.model_file, device=device, threads=threads)
        return cls(manifest, session, Tokenizer.from_dir(folder), defaults_from_folder(folder))

    # ---- public API -------------------------------------------------------------------------

    def generate_ids(self, prompt_ids: list[int] | list[list[int]], **options: Any) -> list:
        """New token ids (EOS included when reached, as transformers does). A list of prompts is
        generated as one left-padded batch and gives a list; num_return_sequences > 1 gives a
        list of that many results per prompt."""
        batched = bool(prompt_ids) and isinstance(prompt_ids[0], list | tuple)
        prompts = [list(p) for p in prompt_ids] if batched else [list(prompt_ids)]
        opts = self.options(**options)
        rows = self._run(prompts, opts, text=bool(opts.stop))
        return self._shape([row.ids for row in rows], batched, opts)

    def generate(self, prompt: str | list[str], **options: Any) -> str | list:
        """The continuation of `prompt` (not including it). A list of prompts gives a list;
        num_return_sequences > 1 gives a list of that many continuations per prompt."""
        batched = not isinstance(prompt, str)
        prompts = [self.encode(p) for p in (prompt if batched else [prompt])]
        opts = self.options(**options)
        rows = self._run(prompts, opts, text=True)
        return self._shape([row.text for row in rows], batched, opts)

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """Text pieces as they are decided; they join to exactly what `generate` returns. Never
        half a UTF-8 character; text that may start a stop string is held until decided."""
        opts = self.options(**options)
        if opts.num_return_sequences != 1:
            raise InvalidOptionError("stream() produces one sequence: use num_return_sequences=1")
        rows = self._rows([self.encode(prompt)], opts, text=True)
        for _ in self._steps(rows, opts):
            piece = rows[0].take()
            if piece:
                yield piece
        rows[0].close()
        rest = rows[0].take()
        if rest:
            yield rest

    def options(self, **overrides: Any) -> GenerationOptions:
        """The folder's defaults with `overrides` applied and validated."""
        return self.defaults.with_overrides(**overrides)

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    # ---- the loop ---------------------------------------------------------------------------

    def _run(self, prompts: list[list[int]], opts: GenerationOptions, text: bool) -> list[Row]:
        rows = self._rows(prompts, opts, text)
        for _ in self._steps(rows, opts):
            pass
        for row in rows:
            row.close()
        return rows

    def _rows(self, prompts: list[list[int]], opts: GenerationOptions, text: bool) -> list[Row]:
        """One Row per returned sequence: each prompt repeated num_return_sequences times."""
        prompts = [self._fit_context(p, opts) for p in prompts]
        stop_ids = frozenset(self._stop_ids(opts).tolist())
        tokenizer = self.tokenizer if text else None
        return [
            Row(prompt, stop_ids, opts.stop, tokenizer)
            for prompt in prompts
            for _ in range(opts.num_return_sequences)
        ]

    def _steps(self, rows: list[Row], opts: GenerationOptions) -> Iterator[int]:
        """Run the model until every row is done or max_new_tokens; yield after each step."""
        rng = np.random.default_rng(opts.seed)
        eos = self._stop_ids(opts)
        ids, mask = kv_cache.left_pad([row.history for row in rows], self.pad_id)  # [B, T]
        positions = kv_cache.prefill_positions(mask)  # [B, T]
        past = kv_cache.empty_past(self.manifest, len(rows))  # 2L × [B, H, 0, D]
        for step in range(opts.max_new_tokens):
            logits, past = self.forward(ids, mask, positions, past, last_only=True)  # [B, 1, V]
            scores = self._process(logits[:, -1, :], rows, opts, eos, step)  # [B, V]
            next_ids = self._choose(scores, opts, rng)  # [B]
            for row, token in zip(rows, next_ids.tolist(), strict=True):
                if not row.done:
                    row.push(token)
            yield step
            if all(row.done for row in rows) or step == opts.max_new_tokens - 1:
                return
            ids = next_ids[:, None]  # [B, 1]; finished rows keep running, their output is closed
            mask = kv_cache.extend_mask(mask)  # [B, P + 1]
            positions = kv_cache.next_positions(mask)  # [B, 1]

    def forward(
        self,
        ids: np.ndarray,
        mask: np.ndarray,
        positions: np.ndarray,
        past: list[np.ndarray],
        last_only: bool = False,
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """One graph run. ids, positions: [B, T]; mask: [B, P + T]; past: 2L × [B, H, P, D]
        → logits [B, T, V] ([B, 1, V] with last_only, when the graph can), presents
        2L × [B, H, P + T, D]."""
        names = self.manifest.tensors
        feeds = {names.input_ids: ids, names.attention_mask: mask, names.position_ids: positions}
        if last_only and names.logits_to_keep:
            feeds[names.logits_to_keep] = _LAST_ONLY
        feeds.update(zip(self._past_names, past, strict=True))
        logits, *present = self._session.run(self._outputs, feeds)
        return logits, present

    @staticmethod
    def _process(
        scores: np.ndarray, rows: list[Row], opts: GenerationOptions, eos: np.ndarray, step: int
    ) -> np.ndarray:
        """transformers' logits processors, row by row. scores: [B, V] (a copy is modified)."""
        plain = opts.repetition_penalty == 1.0 and not opts.no_repeat_ngram_size
        if plain and step >= opts.min_new_tokens:
            return scores
        scores = scores.copy()
        for row, row_scores in zip(rows, scores, strict=True):
            if row.done:  # its output is closed: whatever it picks is discarded
                continue
            processors.repetition_penalty(row_scores, row.history, opts.repetition_penalty)
            processors.no_repeat_ngram(row_scores, row.history, opts.no_repeat_ngram_size)
            if step < opts.min_new_tokens:
                processors.suppress(row_scores, eos)
        return scores

    @staticmethod
    def _choose(
        scores: np.ndarray, opts: GenerationOptions, rng: np.random.Generator
    ) -> np.ndarray:
        if not opts.do_sample:
            return greedy(scores)
        return sample(logits_to_probs(scores, opts.temperature, opts.top_k, opts.top_p), rng)

    def _stop_ids(self, opts: GenerationOptions) -> np.ndarray:
        """EOS ids: an explicit override, else the model's; none with ignore_eos."""
        if opts.ignore_eos:
            return np.empty(0, dtype=np.int64)
        if opts.eos_token_id is not None:
            return np.asarray(opts.eos_token_id, dtype=np.int64)
        eos = self.manifest.eos_token_id
        return np.asarray([] if eos is None else [eos], dtype=np.int64)

    def _fit_context(self, prompt: list[int], opts: GenerationOptions) -> list[int]:
        """The prompt itself, or its newest tokens with truncate_prompt="left"; else an error."""
        if not prompt:
            raise InvalidOptionError("the prompt is empty: give at least one token of text")
        limit = self.manifest.max_positions
        room = limit - opts.max_new_tokens
        if len(prompt) <= room:
            return prompt
        if opts.truncate_prompt == "left" and room >= 1:
            return prompt[-room:]
        raise ContextLengthError(
            f"prompt of {len(prompt)} tokens + max_new_tokens {opts.max_new_tokens} exceeds the "
            f"model's context of {limit} tokens: shorten the prompt, lower max_new_tokens"
            + (", or truncate the prompt (truncate_prompt='left')" if room >= 1 else "")
        )

    @staticmethod
    def _shape(results: list, batched: bool, opts: GenerationOptions) -> list:
        """Flat per-row results → per prompt (and per sequence when num_return_sequences > 1)."""
        n = opts.num_return_sequences
        grouped = results if n == 1 else [results[i : i + n] for i in range(0, len(results), n)]
        return grouped if batched else grouped[0]
