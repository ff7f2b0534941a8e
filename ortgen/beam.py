"""Beam search with transformers' semantics (its `_beam_search`, 4.57): per prompt, `num_beams`
running beams; log-softmax, then the processors on log-probabilities; the best 2·k continuations of
all beams; finished hypotheses scored with a length penalty on the generated length (prompt
excluded); the early-stop heuristic and `early_stopping` True / False / "never". Float32
throughout, in transformers' order, so the same logits give the same sequences."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ortgen.decode_state import DecodeState
from ortgen.errors import InvalidOptionError
from ortgen.options import GenerationOptions
from ortgen.processors import banned_ngram_tokens, repetition_penalty, suppress

_IMPOSSIBLE = np.float32(-1e9)  # transformers' score for a beam that must not be chosen


def check_options(opts: GenerationOptions) -> None:
    """Combinations beam search refuses (transformers' or not implemented here)."""
    if opts.do_sample:
        raise InvalidOptionError(
            "beam sampling (num_beams > 1 with do_sample=True) is not implemented: "
            "use do_sample=False for beam search, or num_beams=1 to sample"
        )
    if opts.stop:
        raise InvalidOptionError(
            "stop strings are not implemented with beam search: use num_beams=1 or an EOS id"
        )


@dataclass
class BeamGroup:
    """One prompt's search: k running beams and the k best finished hypotheses."""

    prompt: list[int]
    opts: GenerationOptions  # resolved for this prompt (max_new_tokens, min_new_tokens)
    stop_ids: np.ndarray  # [S] int64 EOS ids
    running: list[list[int]] = field(default_factory=list)  # [k] generated ids per beam
    scores: np.ndarray = field(init=False)  # [k] float32 running scores (summed log-probs)
    parents: list[int] = field(default_factory=list)  # [k] beam each running beam came from
    finished: list[list[int]] = field(default_factory=list)  # [k] hypotheses (slots)
    finished_scores: np.ndarray = field(init=False)  # [k] float32, length-penalised
    is_finished: np.ndarray = field(init=False)  # [k] bool: the slot holds a hypothesis
    improvable: bool = True  # transformers' is_early_stop_heuristic_unsatisfied
    done: bool = False
    steps: int = 0  # tokens generated so far

    def __post_init__(self) -> None:
        k = self.opts.num_beams
        self.running = [[] for _ in range(k)]
        self.scores = np.full(k, _IMPOSSIBLE, dtype=np.float32)
        self.scores[0] = 0.0  # only the first beam continues the prompt: no k identical picks
        self.finished = [[] for _ in range(k)]
        self.finished_scores = np.full(k, _IMPOSSIBLE, dtype=np.float32)
        self.is_finished = np.zeros(k, dtype=bool)

    def advance(self, logits: np.ndarray) -> None:
        """One step from the logits of the running beams ([k, V])."""
        o, k = self.opts, self.opts.num_beams
        vocab = logits.shape[-1]
        total = self._log_probs(logits) + self.scores[:, None]  # [k, V]
        width = max(2, 1 + len(self.stop_ids)) * k  # enough for k beams that don't stop
        top = _topk(total.reshape(-1), width)  # [2k] flat indices, best first
        values = total.reshape(-1)[top]  # [2k] float32
        beams, tokens = top // vocab, top % vocab
        candidates = [self.running[b] + [int(t)] for b, t in zip(beams, tokens, strict=True)]
        length = self.steps + 1
        stops = np.isin(tokens, self.stop_ids) | (length >= o.max_new_tokens)  # [2k]
        # Running beams: the best k candidates that did not stop.
        alive = values + stops.astype(np.float32) * _IMPOSSIBLE
        keep = _topk(alive, k)
        self.running = [candidates[i] for i in keep]
        self.scores, self.parents = alive[keep], [int(beams[i]) for i in keep]
        self._add_finished(candidates, values, stops, length)
        self.steps = length
        self._check_done(stops)

    def best(self) -> list[list[int]]:
        """The num_return_sequences best hypotheses, best first."""
        return self.finished[: self.opts.num_return_sequences]

    def _log_probs(self, logits: np.ndarray) -> np.ndarray:
        """log_softmax, then transformers' processors on each beam's row. → [k, V] float32."""
        logits = logits.astype(np.float32, copy=False)
        shifted = logits - logits.max(axis=-1, keepdims=True)
        out = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))  # [k, V]
        o = self.opts
        for row, generated in zip(out, self.running, strict=True):
            history = self.prompt + generated
            if o.repetition_penalty != 1.0:
                repetition_penalty(row, np.unique(history), o.repetition_penalty)
            if o.no_repeat_ngram_size:
                suppress(row, banned_ngram_tokens(history, o.no_repeat_ngram_size))
            if self.steps < o.min_new_tokens:
                suppress(row, self.stop_ids)
        return out

    def _add_finished(self, candidates, values, stops, length: int) -> None:
        """Merge the candidates that stopped among the first k into the k best hypotheses."""
        o, k = self.opts, self.opts.num_beams
        eligible = stops & (np.arange(len(values)) < k)  # only the top k may finish
        scores = values / np.float32(length**o.length_penalty)
        full = bool(self.is_finished.all()) and o.early_stopping is True
        scores = scores + np.float32(full) * _IMPOSSIBLE
        scores = scores + np.float32(not self.improvable) * _IMPOSSIBLE
        scores = scores + (~eligible).astype(np.float32) * _IMPOSSIBLE
        merged = np.concatenate([self.finished_scores, scores])  # [3k]
        pick = _topk(merged, k)
        hypotheses = self.finished + candidates
        flags = np.concatenate([self.is_finished, eligible])
        self.finished = [hypotheses[i] for i in pick]
        self.finished_scores, self.is_finished = merged[pick], flags[pick]

    def _check_done(self, stops: np.ndarray) -> None:
        """transformers' stopping rule for one prompt (its results never change afterwards)."""
        o = self.opts
        hopeful = self.steps
        if o.early_stopping == "never" and o.length_penalty > 0.0:
            hopeful = o.max_new_tokens  # a longer hypothesis may still score higher
        best = self.scores[0] / np.float32(hopeful**o.length_penalty)
        worst = np.where(self.is_finished, self.finished_scores.min(), _IMPOSSIBLE)
        self.improvable = self.improvable and bool(np.any(best > worst))
        complete = bool(self.is_finished.all()) and o.early_stopping is True
        self.done = not self.improvable or complete or bool(stops.all())


def _topk(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first (ties: lower index first)."""
    part = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    return part[np.lexsort((part, -values[part]))]


def generate_ids(generator, prompts: list[list[int]], opts: GenerationOptions) -> list:
    """Beam search for each prompt (a `Generator`'s). → flat: num_return_sequences id lists per
    prompt, best first."""
    check_options(opts)
    stop_ids = generator.stop_ids(opts)
    groups = []
    for prompt in prompts:
        resolved = opts.for_prompt(len(prompt))
        groups.append(BeamGroup(generator.fit_context(prompt, resolved), resolved, stop_ids))
    results = search(DecodeState.for_model(generator.model), groups)
    return [ids for best in results for ids in best]


def search(state: DecodeState, groups: list[BeamGroup]) -> list[list[list[int]]]:
    """Run every group to its end over `state` (empty on entry). → per group, its best
    hypotheses (generated ids, EOS included where reached)."""
    k = groups[0].opts.num_beams
    logits = state.prefill([g.prompt for g in groups])  # [P, V]
    state.select([p for p in range(len(groups)) for _ in range(k)])  # k copies of each prompt
    logits = np.repeat(logits, k, axis=0)  # [P·k, V]
    live = list(range(len(groups)))  # state rows j·k … j·k + k − 1 hold groups[live[j]]
    while True:
        for j, g in enumerate(live):
            groups[g].advance(logits[j * k : (j + 1) * k])
        going = [(j, g) for j, g in enumerate(live) if not groups[g].done]
        if not going:
            return [g.best() for g in groups]
        state.select([j * k + p for j, g in going for p in groups[g].parents])
        live = [g for _, g in going]
        tokens = [beam[-1] for g in live for beam in groups[g].running]
        logits = state.step(np.asarray(tokens, dtype=np.int64))  # [live·k, V]
