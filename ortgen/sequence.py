"""One sequence being generated: its options and own RNG, the processors' view of its tokens, the
next-token choice, and its output (ids, EOS, stop strings, text decided so far). A sequence's
tokens depend on its prompt, options and seed only — never on the batch it runs in."""

from __future__ import annotations

import numpy as np

from ortgen.options import GenerationOptions
from ortgen.processors import NgramTable, repetition_penalty, suppress
from ortgen.sampling import sample_row
from ortgen.stopping import StopText
from ortgen.tokenizer import TextStream, Tokenizer


def sequence_rng(seed: int | None, index: int) -> np.random.Generator:
    """The RNG of a prompt's `index`-th returned sequence: seeded runs are reproducible and equal
    whatever else is generated beside them; unseeded runs draw fresh entropy."""
    return np.random.default_rng(None if seed is None else [seed, index])


class Sequence:
    """A prompt's continuation, token by token; see the module docstring."""

    def __init__(
        self,
        prompt: list[int],
        options: GenerationOptions,
        stop_ids: np.ndarray,
        tokenizer: Tokenizer | None,
        index: int = 0,
    ) -> None:
        self.prompt = list(prompt)
        self.options = options
        self.ids: list[int] = []  # generated ids, EOS or the stop string's last token included
        self.done = False
        self.finish_reason = "length"  # "stop" once EOS or a stop string ends it
        self.text = ""  # all decided text so far
        self._rng = sequence_rng(options.seed, index)
        self._stop_ids = stop_ids  # [S] int64 EOS ids
        self._stop_set = frozenset(stop_ids.tolist())  # the same, for `in` per token
        self._seen = dict.fromkeys(prompt)  # insertion-ordered unique ids: repetition penalty
        size = options.no_repeat_ngram_size
        self._ngrams = NgramTable(self.prompt, size) if size else None
        self._text = TextStream(tokenizer) if tokenizer is not None else None
        self._stops = StopText(options.stop)
        self._pieces: list[str] = []  # decided text not yet taken by a stream

    def choose(self, logits: np.ndarray) -> int:
        """The next id from this sequence's logits ([V]), after its processors."""
        o = self.options
        if not o.do_sample and not self._penalised():
            # greedy without penalties: suppressing EOS (before min_new_tokens) only matters
            # when the plain argmax is an EOS id — no copy of the row otherwise
            token = int(np.argmax(logits))
            if not (token in self._stop_set and self._early()):
                return token
        scores = self._process(logits)
        if not o.do_sample:
            return int(np.argmax(scores))
        return sample_row(scores, self._rng, o.temperature, o.top_k, o.top_p)

    def push(self, token: int) -> None:
        self.ids.append(token)
        self._seen[token] = None
        if self._ngrams is not None:
            self._ngrams.push(token)
        if token in self._stop_set:
            self.done, self.finish_reason = True, "stop"
        if self._text is not None:
            self._decide(self._stops.feed(self._text.push(token)))
            if self._stops.hit:
                self.done, self.finish_reason = True, "stop"
        if len(self.ids) >= self.options.max_new_tokens:
            self.done = True

    def close(self) -> None:
        """No more tokens: release text held back for UTF-8 or stop-string reasons."""
        if self._text is not None and not self._stops.hit:
            self._decide(self._stops.feed(self._text.finish()))
            self._decide(self._stops.flush())

    def take(self) -> str:
        """Text decided since the last call (for streaming)."""
        piece, self._pieces = "".join(self._pieces), []
        return piece

    @property
    def history(self) -> list[int]:
        return self.prompt + self.ids

    def _process(self, logits: np.ndarray) -> np.ndarray:
        """transformers' logits processors on a copy of one row, only when one applies."""
        o = self.options
        early = self._early()
        if not self._penalised() and not early:
            return logits
        scores = logits.astype(np.float32, copy=True)  # [V]
        seen = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))
        repetition_penalty(scores, seen, o.repetition_penalty)
        if self._ngrams is not None:
            suppress(scores, self._ngrams.banned())
        if early:
            suppress(scores, self._stop_ids)
        return scores

    def _penalised(self) -> bool:
        """Whether a repetition penalty or an n-gram ban changes this sequence's scores."""
        return self.options.repetition_penalty != 1.0 or self._ngrams is not None

    def _early(self) -> bool:
        """Below min_new_tokens: EOS may not be chosen yet."""
        return len(self.ids) < self.options.min_new_tokens and bool(self._stop_set)

    def _decide(self, piece: str) -> None:
        if piece:
            self._pieces.append(piece)
            self.text += piece
