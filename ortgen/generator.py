"""The user-facing Generator: loads a model folder and turns prompts into text through one decode
state per call (prefill, then one step per token), each sequence choosing its own tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ortgen import beam
from ortgen.decode_state import DecodeState
from ortgen.errors import ContextLengthError, InvalidOptionError, ModelFolderError
from ortgen.model import Model
from ortgen.options import GenerationOptions, defaults_from_folder
from ortgen.sequence import Sequence
from ortgen.tokenizer import Tokenizer

DEFAULT_MODEL = Path(__file__).parent / "models" / "default"  # small int8 GPT-2, see README


def default_model() -> Path:
    if not (DEFAULT_MODEL / "ortgen.json").is_file():
        raise ModelFolderError(
            "this installation has no bundled default model: pass --model / a model folder"
        )
    return DEFAULT_MODEL


class Generator:
    """Text generation from one exported model folder (GPT-2 or GPT-Neo), without torch.

    Safe to share between threads: each call runs its own decode state over the shared ONNX
    Runtime session (whose `run` is thread-safe), and the tokenizer is only read."""

    def __init__(self, model: Model, tokenizer: Tokenizer, defaults: GenerationOptions) -> None:
        self.model = model
        self.manifest = model.manifest
        self.tokenizer = tokenizer
        self.defaults = defaults
        self.pad_id = model.pad_id

    @classmethod
    def from_dir(
        cls,
        path: str | Path | None = None,
        device: str = "cpu",
        threads: int | None = None,
        graph: str | None = None,
        spin: bool | int = True,
        huge_pages: bool = True,
    ) -> Generator:
        """Load `path` (written by `ortgen export`; default: the bundled model) on `device`
        ("cpu" or "cuda"). `graph`: "native" or "inplace" (the defaults, in that order, where the
        folder has them, on CPU; see model.fastest_graph) or "portable" (model.onnx, as other
        clients run it). `spin=False`: idle ONNX Runtime threads sleep instead of busy-waiting
        (for machines whose cores are shared); `spin=N`: they busy-wait N µs, then sleep.
        `huge_pages=False`: weights stay in the page cache, shared by processes that load the
        same folder (see Model.load)."""
        folder = Path(path) if path is not None else default_model()
        if graph is None and device != "cpu":
            graph = "portable"  # the in-place cache lives in host memory
        model = Model.load(
            folder, device=device, threads=threads, graph=graph, spin=spin, huge_pages=huge_pages
        )
        return cls(model, Tokenizer.from_dir(folder), defaults_from_folder(folder))

    # ---- public API -------------------------------------------------------------------------

    def generate_ids(self, prompt_ids: list[int] | list[list[int]], **options: Any) -> list:
        """New token ids (EOS included when reached, as transformers does). A list of prompts is
        generated as one batch and gives a list; num_return_sequences > 1 gives a list of that
        many results per prompt."""
        batched = bool(prompt_ids) and isinstance(prompt_ids[0], list | tuple)
        prompts = [list(p) for p in prompt_ids] if batched else [list(prompt_ids)]
        opts = self.options(**options)
        if opts.num_beams > 1:
            return self._shape(beam.generate_ids(self, prompts, opts), batched, opts)
        sequences = self.run(self.sequences(prompts, opts, text=bool(opts.stop)))
        return self._shape([s.ids for s in sequences], batched, opts)

    def generate(
        self, prompt: str | list[str], return_full_text: bool = False, **options: Any
    ) -> str | list:
        """The continuation of `prompt` (with return_full_text, prompt + continuation, as
        transformers' text-generation pipeline). A list of prompts gives a list;
        num_return_sequences > 1 gives a list of that many continuations per prompt."""
        batched = not isinstance(prompt, str)
        texts = prompt if batched else [prompt]
        prompts = [self.encode(p) for p in texts]
        opts = self.options(**options)
        if opts.num_beams > 1:
            results = [self.tokenizer.decode(ids) for ids in beam.generate_ids(self, prompts, opts)]
        else:
            results = [s.text for s in self.run(self.sequences(prompts, opts, text=True))]
        if return_full_text:
            n = opts.num_return_sequences
            results = [texts[i // n] + text for i, text in enumerate(results)]
        return self._shape(results, batched, opts)

    def stream(self, prompt: str, **options: Any) -> Iterator[str]:
        """Text pieces as they are decided; they join to exactly what `generate` returns. Never
        half a UTF-8 character; text that may start a stop string is held until decided."""
        opts = self.options(**options)
        if opts.num_return_sequences != 1:
            raise InvalidOptionError("stream() produces one sequence: use num_return_sequences=1")
        [sequence] = self.sequences([self.encode(prompt)], opts, text=True)
        for _ in self.steps([sequence]):
            piece = sequence.take()
            if piece:
                yield piece
        sequence.close()
        rest = sequence.take()
        if rest:
            yield rest

    def options(self, **overrides: Any) -> GenerationOptions:
        """The folder's defaults with `overrides` applied and validated."""
        options = self.defaults.with_overrides(**overrides)
        options.check_vocabulary(self.manifest.vocab_size)
        return options

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer.encode(prompt)

    def sequences(
        self, prompts: list[list[int]], opts: GenerationOptions, text: bool = True
    ) -> list[Sequence]:
        """One Sequence per returned sequence: each prompt repeated num_return_sequences times."""
        if opts.num_beams > 1:
            raise InvalidOptionError(
                "beam search (num_beams > 1) runs through generate() / generate_ids() only: "
                "streams and the serving engine decode one sequence per row"
            )
        resolved = [opts.for_prompt(len(p)) for p in prompts]  # max_length / min_length
        prompts = [self.fit_context(p, o) for p, o in zip(prompts, resolved, strict=True)]
        stop_ids = self.stop_ids(opts)
        tokenizer = self.tokenizer if text else None
        return [
            Sequence(prompt, o, stop_ids, tokenizer, index)
            for prompt, o in zip(prompts, resolved, strict=True)
            for index in range(opts.num_return_sequences)
        ]

    def embed(self, texts: str | list[str], pooling: str = "none", normalize: bool = False):
        """Final hidden states (after ln_f) of `texts`, as transformers' feature-extraction
        pipeline returns them; pooling "mean" / "last" and L2 `normalize`: see ortgen.features."""
        from ortgen.features import embed

        return embed(self, texts, pooling, normalize)

    # ---- the loop ---------------------------------------------------------------------------

    def run(self, sequences: list[Sequence]) -> list[Sequence]:
        """Generate every sequence to its end; each is closed (held-back text released)."""
        for _ in self.steps(sequences):
            pass
        for sequence in sequences:
            sequence.close()
        return sequences

    def steps(self, sequences: list[Sequence]) -> Iterator[None]:
        """Prefill, then one decode step per token; yields after each token is pushed. A finished
        sequence leaves the batch at once."""
        state = DecodeState.for_model(self.model)
        logits = state.prefill([s.prompt for s in sequences])  # [B, V]
        live = list(range(len(sequences)))  # state row → sequence index
        while True:
            tokens = [sequences[i].choose(row) for i, row in zip(live, logits, strict=True)]
            for i, token in zip(live, tokens, strict=True):
                sequences[i].push(token)
            yield
            going = [row for row, i in enumerate(live) if not sequences[i].done]
            if not going:
                return
            if len(going) < len(live):
                order = state.compact(going)
                live, tokens = [live[r] for r in order], [tokens[r] for r in order]
            logits = state.step(np.asarray(tokens, dtype=np.int64))  # [B, V]

    def stop_ids(self, opts: GenerationOptions) -> np.ndarray:
        """EOS ids: an explicit override, else the model's; none with ignore_eos."""
        if opts.ignore_eos:
            return np.empty(0, dtype=np.int64)
        if opts.eos_token_id is not None:
            return np.asarray(opts.eos_token_id, dtype=np.int64)
        eos = self.manifest.eos_token_id
        return np.asarray([] if eos is None else [eos], dtype=np.int64)

    def fit_context(self, prompt: list[int], opts: GenerationOptions) -> list[int]:
        """The prompt itself, or its newest tokens with truncate_prompt="left"; else an error."""
        if not prompt:
            raise InvalidOptionError("the prompt is empty: give at least one token of text")
        opts = opts.for_prompt(len(prompt))
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
