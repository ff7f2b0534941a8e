"""The export's proof: the ONNX folder against transformers (fp32) on the same checkpoint. Logits
are compared along the reference's greedy path — the prefill and every cached step — for single
prompts (one longer than GPT-Neo's local window) and a left-padded batch; greedy generation runs
through ortgen's own loop. fp32 must match within tolerance; other precisions must keep top-1
agreement above their threshold, with no NaN."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ortgen import Generator
from ortgen.decode_state import DecodeState, left_padded
from ortgen.errors import InvalidOptionError, ParityError

_ANY_PAD = 0  # the batch reference's pad id: masked positions never reach real ones
GREEDY_TOKENS = 32  # reference greedy continuation: cached steps checked, tokens compared
# Plain argmax whatever the folder's generation_config.json says (penalties, sampling).
PURE_GREEDY = dict(
    max_new_tokens=GREEDY_TOKENS,
    do_sample=False,
    ignore_eos=True,
    min_new_tokens=0,
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
)


@dataclass(frozen=True)
class Thresholds:
    """What an export of one precision must achieve against transformers fp32."""

    max_abs_diff: float | None  # bound on |Δ logits| (None: not bounded)
    top1: float  # argmax agreement over every checked position
    greedy: float  # argmax agreement along the reference greedy path (teacher-forced)
    greedy_identical: bool  # free-running greedy tokens must equal transformers'


THRESHOLDS = {
    "fp32": Thresholds(max_abs_diff=1e-4, top1=1.0, greedy=1.0, greedy_identical=True),
    "fp16": Thresholds(max_abs_diff=None, top1=0.95, greedy=0.95, greedy_identical=False),
    "int8": Thresholds(max_abs_diff=None, top1=0.90, greedy=0.90, greedy_identical=False),
    "int4": Thresholds(max_abs_diff=None, top1=0.80, greedy=0.80, greedy_identical=False),
}

PROMPTS = (
    "The quick brown fox jumps over the lazy dog.",
    "In the beginning of the story, the old lighthouse keeper",
)
_LONG_TEXT = (
    "Once upon a time, in a small village by the sea, there lived a fisherman who told stories "
    "to anyone who would listen. Every evening the children gathered at the harbour, and he spoke "
    "of storms, of distant islands and of the strange lights that danced on the water at night. "
)


@dataclass
class PromptReport:
    graph: str  # "portable" (model.onnx) or "inplace" (the runtime's KV graph)
    tokens: int  # prompt length
    prefill_max_abs_diff: float  # over all prompt positions
    step_max_abs_diff: list[float]  # one per cached step along the greedy path
    mean_abs_diff: float  # over every checked position
    top1_agreement: float  # over every checked position
    greedy_agreement: float  # argmax = reference greedy token, teacher-forced
    greedy_identical: bool  # free-running ortgen greedy == transformers greedy
    nan_count: int  # NaN or inf in the ONNX logits


@dataclass
class ParityReport:
    precision: str
    thresholds: dict[str, Any]
    max_abs_diff: float = 0.0  # worst over every check
    mean_abs_diff: float = 0.0
    top1_agreement: float = 1.0
    greedy_agreement: float = 1.0
    nan_count: int = 0
    batch_max_abs_diff: float = 0.0  # left-padded batch of all prompts, real positions only
    prompts: list[PromptReport] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # thresholds crossed

    @property
    def passed(self) -> bool:
        return not self.failures


def parity_prompts(tokenizer: Any, window: int | None, max_positions: int) -> list[list[int]]:
    """Token ids of the check prompts; the last is longer than a local-attention window."""
    budget = max_positions - GREEDY_TOKENS - 1
    long_len = min((window or 48) + 16, budget)
    long_ids: list[int] = []
    while len(long_ids) < long_len:
        long_ids += tokenizer(_LONG_TEXT)["input_ids"]
    prompts = [tokenizer(p)["input_ids"][:budget] for p in PROMPTS]
    return [*prompts, long_ids[:long_len]]


def thresholds_for(precision: str, min_agreement: float | None = None) -> Thresholds:
    """The precision's thresholds; `min_agreement` replaces the agreement ones (not for fp32)."""
    limits = THRESHOLDS[precision]
    if min_agreement is None:
        return limits
    if precision == "fp32":
        raise InvalidOptionError("--min-agreement applies to fp16 / int8 / int4, not fp32")
    if not 0.0 <= min_agreement <= 1.0:
        raise InvalidOptionError(f"--min-agreement must be in [0, 1], got {min_agreement}")
    return replace(limits, top1=min_agreement, greedy=min_agreement)


@dataclass(frozen=True)
class Reference:
    """transformers' outputs for one check prompt: its pure greedy continuation and the logits at
    every position of prompt + continuation."""

    ids: list[int]
    greedy: list[int]  # GREEDY_TOKENS ids
    logits: np.ndarray  # [T + G, V] float32


@dataclass(frozen=True)
class References:
    """Everything the check compares with, computed once from the transformers model, so the
    model can be freed before the ONNX sessions load (an export never holds both)."""

    prompts: list[Reference]
    batch_logits: np.ndarray  # [B, T, V]: all prompts as one left-padded batch


def reference_outputs(model: Any, prompts: list[list[int]]) -> References:
    """transformers' side of the check for `prompts` (see References)."""
    return References(
        prompts=[_reference(model, ids) for ids in prompts],
        batch_logits=_batch_reference(model, prompts),
    )


def check_parity(
    references: References, folder: Path, precision: str, limits: Thresholds
) -> ParityReport:
    """Compare the folder with transformers' `references`; raise ParityError when a threshold is
    crossed. One ONNX session is alive at a time."""
    report = ParityReport(precision=precision, thresholds=asdict(limits))
    for graph in _graphs(folder):  # what other clients load, and what ortgen runs
        generator = Generator.from_dir(folder, graph=graph)
        report.prompts += [_check_prompt(ref, generator, graph) for ref in references.prompts]
        report.batch_max_abs_diff = max(
            report.batch_max_abs_diff, _batch_diff(references, generator)
        )
        del generator  # before the next graph's session loads
    _summarise(report)
    report.failures = _failures(report, limits)
    if report.failures:
        raise ParityError(
            f"{precision} parity check failed: {'; '.join(report.failures)} — the export does not "
            "reproduce transformers closely enough"
            + ("; try a larger --block-size or int8" if precision == "int4" else "")
        )
    return report


def _graphs(folder: Path) -> list[str]:
    from ortgen.manifest import read_manifest

    return ["portable", "inplace"] if read_manifest(folder).inplace else ["portable"]


def report_dict(report: ParityReport) -> dict[str, Any]:
    return {**asdict(report), "passed": report.passed}


def _summarise(report: ParityReport) -> None:
    prompts = report.prompts
    report.max_abs_diff = max(
        [report.batch_max_abs_diff]
        + [max(p.prefill_max_abs_diff, *p.step_max_abs_diff) for p in prompts]
    )
    report.mean_abs_diff = float(np.mean([p.mean_abs_diff for p in prompts]))
    report.top1_agreement = float(np.mean([p.top1_agreement for p in prompts]))
    report.greedy_agreement = float(np.mean([p.greedy_agreement for p in prompts]))
    report.nan_count = sum(p.nan_count for p in prompts)


def _failures(report: ParityReport, limits: Thresholds) -> list[str]:
    failures = []
    if report.nan_count:
        failures.append(f"{report.nan_count} NaN/inf logits")
    if limits.max_abs_diff is not None and not report.max_abs_diff <= limits.max_abs_diff:
        failures.append(f"max |Δ logits| {report.max_abs_diff:.2e} > {limits.max_abs_diff:.0e}")
    if report.top1_agreement < limits.top1:
        failures.append(f"top-1 agreement {report.top1_agreement:.1%} < {limits.top1:.0%}")
    if report.greedy_agreement < limits.greedy:
        failures.append(f"greedy agreement {report.greedy_agreement:.1%} < {limits.greedy:.0%}")
    mismatched = sum(not p.greedy_identical for p in report.prompts)
    if limits.greedy_identical and mismatched:
        failures.append(f"greedy tokens differ on {mismatched}/{len(report.prompts)} prompts")
    return failures


@torch.inference_mode()
def _reference(model: Any, ids: list[int]) -> Reference:
    """transformers' pure greedy continuation (argmax, no processors: `generate` would merge in
    the checkpoint's generation_config) and its logits at every position."""
    out = model(torch.tensor([ids]), use_cache=True)
    greedy = []
    for _ in range(GREEDY_TOKENS):
        greedy.append(int(out.logits[0, -1].argmax()))
        out = model(
            torch.tensor([[greedy[-1]]]), past_key_values=out.past_key_values, use_cache=True
        )
    full = torch.tensor([ids + greedy])  # [1, T + G]
    return Reference(list(ids), greedy, model(full).logits[0].float().numpy())


def _check_prompt(ref: Reference, generator: Generator, graph: str) -> PromptReport:
    ids, greedy, reference = ref.ids, ref.greedy, ref.logits
    logits = _onnx_along(generator, ids, greedy)  # [T + G, V]
    diff = np.abs(logits - reference)
    t = len(ids)
    agree = logits.argmax(-1) == reference.argmax(-1)  # [T + G]
    steps = diff[t:].max(-1)  # [G]
    tokens = generator.generate_ids(ids, **PURE_GREEDY)
    return PromptReport(
        graph=graph,
        tokens=t,
        prefill_max_abs_diff=float(diff[:t].max()),
        step_max_abs_diff=[float(x) for x in steps],
        mean_abs_diff=float(diff.mean()),
        top1_agreement=float(agree.mean()),
        greedy_agreement=float((logits[t - 1 : -1].argmax(-1) == np.asarray(greedy)).mean()),
        greedy_identical=tokens == greedy,
        nan_count=int((~np.isfinite(logits)).sum()),
    )


def _onnx_along(generator: Generator, ids: list[int], greedy: list[int]) -> np.ndarray:
    """Prefill `ids`, then one cached step per reference greedy token. → logits [T + G, V]."""
    state = DecodeState.for_model(generator.model)
    rows = [state.prefill([ids], all_logits=True)[0]]  # [T, V]
    rows += [state.step(np.asarray([token])) for token in greedy]  # G × [1, V]
    return np.concatenate(rows).astype(np.float32)


@torch.inference_mode()
def _batch_reference(model: Any, prompts: list[list[int]]) -> np.ndarray:
    """All prompts as one left-padded batch through transformers. → logits [B, T, V]. (The pad
    id is any token: padded positions are masked, and only real positions are compared.)"""
    ids, mask, positions = left_padded(prompts, _ANY_PAD)  # [B, T] each
    return (
        model(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            position_ids=torch.from_numpy(positions),
        )
        .logits.float()
        .numpy()
    )


def _batch_diff(references: References, generator: Generator) -> float:
    """The same batch prefilled through ONNX (left-padded on the portable graph), compared at
    real positions."""
    prompts = [ref.ids for ref in references.prompts]
    _, mask, _ = left_padded(prompts, _ANY_PAD)
    onnx_logits = DecodeState.for_model(generator.model).prefill(prompts, all_logits=True)
    real = mask.astype(bool)  # [B, T]
    return float(np.abs(onnx_logits[real].astype(np.float32) - references.batch_logits[real]).max())
