"""The export's proof: the ONNX folder against transformers (fp32) on the same checkpoint. Logits
are compared along the reference's greedy path — the prefill and every cached step — for single
prompts (one longer than GPT-Neo's local window) and a left-padded batch; greedy generation runs
through ortgen's own loop. fp32 must match within tolerance; other precisions must keep top-1
agreement above their threshold, with no NaN.

transformers in fp32 is itself only an approximation of the checkpoint's exact function, and its
rounding error grows with width and depth (gpt-neo-1.3B: 2.7e-4 from the float64 result, above the
1e-4 tolerance). So an fp32 export also runs transformers' forward in float64: where ONNX is more
than the tolerance from transformers fp32, it passes only if its own distance from the float64
logits is within ROUNDING_FACTOR × transformers' fp32 distance — rounding of the same order as
transformers' own. A wrong operation (activation, mask, scaling, weight) is orders of magnitude
above rounding and is refused either way."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
    # Beyond max_abs_diff, the export's distance from the float64 logits may be at most this
    # multiple of transformers fp32's own (None: no float64 reference, max_abs_diff is final).
    rounding_factor: float | None = None


# Measured on gpt-neo-1.3B (random weights, real config), per prompt: ONNX fp32 is 1.8–2.0× as far
# from float64 as transformers fp32 is (fused graph; the unfused one less).
ROUNDING_FACTOR = 4.0

THRESHOLDS = {
    "fp32": Thresholds(
        max_abs_diff=1e-4,
        top1=1.0,
        greedy=1.0,
        greedy_identical=True,
        rounding_factor=ROUNDING_FACTOR,
    ),
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
    # Against the float64 forward (None without one): transformers fp32's and ONNX's max |Δ|.
    reference_error: float | None = None
    exact_max_abs_diff: float | None = None


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
    reference_error: float | None = None  # max |transformers fp32 − float64| (None: not run)
    exact_max_abs_diff: float | None = None  # max |ONNX − float64|, batch included
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
    exact: np.ndarray | None  # [T + G, V] float64: the same forward in float64 (None: not run)


@dataclass(frozen=True)
class References:
    """Everything the check compares with, computed once from the transformers model, so the
    model can be freed before the ONNX sessions load (an export never holds both)."""

    prompts: list[Reference]
    batch_logits: np.ndarray  # [B, T, V]: all prompts as one left-padded batch


def reference_outputs(model: Any, prompts: list[list[int]], exact: bool = True) -> References:
    """transformers' side of the check for `prompts` (see References); `exact` adds the float64
    forward that fp32's bound needs (the other precisions' gates do not use it)."""
    references = [_reference(model, ids) for ids in prompts]
    if exact:
        references = [
            replace(ref, exact=_exact_logits(model, ref.ids + ref.greedy)) for ref in references
        ]
    return References(prompts=references, batch_logits=_batch_reference(model, prompts))


def check_parity(
    references: References, folder: Path, precision: str, limits: Thresholds
) -> ParityReport:
    """Compare the folder with transformers' `references`; raise ParityError when a threshold is
    crossed. One ONNX session is alive at a time."""
    report = ParityReport(precision=precision, thresholds=asdict(limits))
    for graph in _graphs(folder):  # what other clients load, and what ortgen runs
        generator = Generator.from_dir(folder, graph=graph)
        report.prompts += [_check_prompt(ref, generator, graph) for ref in references.prompts]
        batch, batch_exact = _batch_diff(references, generator)
        report.batch_max_abs_diff = max(report.batch_max_abs_diff, batch)
        if batch_exact is not None:
            report.exact_max_abs_diff = max(report.exact_max_abs_diff or 0.0, batch_exact)
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
    if all(p.exact_max_abs_diff is not None for p in prompts):
        report.reference_error = max(p.reference_error for p in prompts)
        report.exact_max_abs_diff = max(
            [report.exact_max_abs_diff or 0.0] + [p.exact_max_abs_diff for p in prompts]
        )


def _failures(report: ParityReport, limits: Thresholds) -> list[str]:
    failures = []
    if report.nan_count:
        failures.append(f"{report.nan_count} NaN/inf logits")
    if limits.max_abs_diff is not None and not report.max_abs_diff <= limits.max_abs_diff:
        failure = f"max |Δ logits| {report.max_abs_diff:.2e} > {limits.max_abs_diff:.0e}"
        if limits.rounding_factor is None or report.reference_error is None:
            failures.append(failure)
        elif not report.exact_max_abs_diff <= limits.rounding_factor * report.reference_error:
            failures.append(
                f"{failure}, and ONNX is {report.exact_max_abs_diff:.2e} from the float64 result, "
                f"more than {limits.rounding_factor:g}× transformers fp32's own "
                f"{report.reference_error:.2e}"
            )
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
    return Reference(list(ids), greedy, model(full).logits[0].float().numpy(), exact=None)


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
        **_exact_diffs(ref, logits),
    )


def _exact_diffs(ref: Reference, logits: np.ndarray) -> dict[str, float]:
    if ref.exact is None:
        return {}
    return {
        "reference_error": float(np.abs(ref.logits - ref.exact).max()),
        "exact_max_abs_diff": float(np.abs(logits - ref.exact).max()),
    }


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


def _batch_diff(references: References, generator: Generator) -> tuple[float, float | None]:
    """The same batch prefilled through ONNX (left-padded on the portable graph), compared at
    real positions. → (max |Δ| from transformers fp32, from float64 or None). A row's real
    positions are its prompt's alone, so the single prompts' float64 logits serve the batch."""
    prompts = [ref.ids for ref in references.prompts]
    _, mask, _ = left_padded(prompts, _ANY_PAD)
    onnx_logits = DecodeState.for_model(generator.model).prefill(prompts, all_logits=True)
    real = mask.astype(bool)  # [B, T]
    onnx_real = onnx_logits[real].astype(np.float32)  # rows' prompts, concatenated
    diff = float(np.abs(onnx_real - references.batch_logits[real]).max())
    if any(ref.exact is None for ref in references.prompts):
        return diff, None
    exact = np.concatenate([ref.exact[: len(ref.ids)] for ref in references.prompts])
    return diff, float(np.abs(onnx_real - exact).max())


@contextmanager
def _in_float64(model: Any) -> Iterator[None]:
    """Run `model`'s forward in float64, one module's weights in float64 at a time: a module with
    parameters of its own gets float64 copies just before its forward and its own tensors back
    just after — the same storage (mapped checkpoint pages stay as they are), so memory grows by
    one module's float64 copy, never by a second model."""
    own: dict[int, list] = {}  # module id → [(parameter, its float32 data)] while it runs

    def up(module: Any, _args: Any) -> None:  # a hook's return value would replace the input
        own[id(module)] = [(p, p.data) for p in module.parameters(recurse=False)]
        for parameter, data in own[id(module)]:
            parameter.data = data.double()

    def down(module: Any, _args: Any, _out: Any) -> None:
        for parameter, data in own.pop(id(module)):
            parameter.data = data

    handles = []
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            handles += [module.register_forward_pre_hook(up), module.register_forward_hook(down)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for pairs in own.values():  # modules a failed forward left in float64
            for parameter, data in pairs:
                parameter.data = data


@torch.inference_mode()
def _exact_logits(model: Any, ids: list[int]) -> np.ndarray | None:
    """transformers' forward of `ids` in float64 → logits [T, V] float64, or None where
    transformers' code mixes dtypes it cannot run in float64 (`reorder_and_upcast_attn` computes
    its scores into a float32 buffer). GPT-Neo keeps its attention scores in float32 by design;
    the rest of the forward is float64."""
    try:
        with _in_float64(model):
            return model(torch.tensor([ids])).logits[0].double().numpy()
    except RuntimeError:
        return None
