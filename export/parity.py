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

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ortgen import Generator
from ortgen.decode_state import DecodeState, left_padded
from ortgen.errors import InvalidOptionError, ParityError, first_line

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
    # multiple of transformers fp32's own, prompt by prompt (None: max_abs_diff is final) ...
    rounding_factor: float | None = None
    # ... while transformers fp32's own distance stays rounding-sized: beyond this, the float64
    # forward computes something else than rounding can explain and vouches for nothing.
    max_reference_error: float | None = None


# Measured on gpt-neo-1.3B (random weights, real config), per prompt: ONNX fp32 is 1.7–2.0× as far
# from float64 as transformers fp32 is (fused graph; the unfused one less).
ROUNDING_FACTOR = 4.0

THRESHOLDS = {
    "fp32": Thresholds(
        max_abs_diff=1e-4,
        top1=1.0,
        greedy=1.0,
        greedy_identical=True,
        rounding_factor=ROUNDING_FACTOR,
        max_reference_error=1e-3,  # gpt-neo-1.3B: 2.7e-4; models up to 125M: ~2e-6
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
    graph: str  # "portable" (model.onnx), "inplace" (the runtime's KV graph) or "native"
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
    # Worst, over the prompts and batch rows where ONNX is more than max_abs_diff from float64, of
    # that distance ÷ transformers fp32's own on the same positions (0: none is; None: no float64).
    rounding_ratio: float | None = None
    exact_unavailable: str | None = None  # why there are no float64 logits (fp32 only)
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
    exact_unavailable: str | None = None  # why the prompts have no float64 logits, if asked


def reference_outputs(model: Any, prompts: list[list[int]], exact: bool = True) -> References:
    """transformers' side of the check for `prompts` (see References); `exact` adds the float64
    forward that fp32's bound needs (the other precisions' gates do not use it)."""
    references = [_reference(model, ids) for ids in prompts]
    unavailable = None
    if exact:
        with_exact = []
        for ref in references:
            logits, unavailable = _exact_logits(model, ref.ids + ref.greedy)
            if logits is None:
                break
            with_exact.append(replace(ref, exact=logits))
        else:
            references = with_exact
    return References(references, _batch_reference(model, prompts), unavailable)


def check_parity(
    references: References, folder: Path, precision: str, limits: Thresholds
) -> ParityReport:
    """Compare the folder with transformers' `references`; raise ParityError when a threshold is
    crossed. One ONNX session is alive at a time."""
    report = ParityReport(precision=precision, thresholds=asdict(limits))
    report.exact_unavailable = references.exact_unavailable
    batch_rows: list[tuple[float, float]] = []  # (ONNX, transformers fp32) distance from float64
    for graph in _graphs(folder):  # what other clients load, and what ortgen runs
        generator = Generator.from_dir(folder, graph=graph)
        report.prompts += [_check_prompt(ref, generator, graph) for ref in references.prompts]
        batch, rows = _batch_diff(references, generator)
        report.batch_max_abs_diff = max(report.batch_max_abs_diff, batch)
        batch_rows += rows
        del generator  # before the next graph's session loads
    _summarise(report, batch_rows)
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

    inplace = read_manifest(folder).inplace
    return [
        "portable",
        *(["inplace"] if inplace else []),
        *(["native"] if inplace.get("native_file") else []),
    ]


def report_dict(report: ParityReport) -> dict[str, Any]:
    return {**asdict(report), "passed": report.passed}


def _summarise(report: ParityReport, batch_rows: list[tuple[float, float]]) -> None:
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
        pairs = [(p.exact_max_abs_diff, p.reference_error) for p in prompts] + batch_rows
        report.exact_max_abs_diff = max(onnx for onnx, _ in pairs)
        report.reference_error = max(reference for _, reference in pairs)
        # Ratios of rounding-sized numbers are noise: within the tolerance of float64 is enough.
        tolerance = report.thresholds["max_abs_diff"] or 0.0
        report.rounding_ratio = max(
            [0.0] + [_ratio(onnx, ref) for onnx, ref in pairs if onnx > tolerance]
        )


def _ratio(onnx: float, reference: float) -> float:
    return onnx / reference if reference > 0 else float("inf")


def _failures(report: ParityReport, limits: Thresholds) -> list[str]:
    failures = []
    if report.nan_count:
        failures.append(f"{report.nan_count} NaN/inf logits")
    if limits.max_abs_diff is not None and not report.max_abs_diff <= limits.max_abs_diff:
        failure = _beyond_rounding(
            report, limits, f"max |Δ logits| {report.max_abs_diff:.2e} > {limits.max_abs_diff:.0e}"
        )
        if failure:
            failures.append(failure)
    if report.top1_agreement < limits.top1:
        failures.append(f"top-1 agreement {report.top1_agreement:.1%} < {limits.top1:.0%}")
    if report.greedy_agreement < limits.greedy:
        failures.append(f"greedy agreement {report.greedy_agreement:.1%} < {limits.greedy:.0%}")
    mismatched = sum(not p.greedy_identical for p in report.prompts)
    if limits.greedy_identical and mismatched:
        failures.append(f"greedy tokens differ on {mismatched}/{len(report.prompts)} prompts")
    return failures


def _beyond_rounding(report: ParityReport, limits: Thresholds, failure: str) -> str | None:
    """None when the float64 logits show the excess over max_abs_diff to be rounding of the order
    of transformers fp32's own; else `failure`, said with what the float64 check found."""
    if limits.rounding_factor is None:
        return failure
    if report.rounding_ratio is None:
        why = report.exact_unavailable or "not computed"
        return f"{failure} (no float64 logits to compare with: {why})"
    if limits.max_reference_error is not None and (
        not report.reference_error <= limits.max_reference_error
    ):
        return (
            f"{failure}, and transformers' float64 forward is {report.reference_error:.2e} from "
            f"its fp32 one, more than rounding (> {limits.max_reference_error:.0e})"
        )
    if not report.rounding_ratio <= limits.rounding_factor:
        return (
            f"{failure}, and ONNX is up to {report.rounding_ratio:.1f}× as far from the float64 "
            f"result as transformers fp32 is (limit {limits.rounding_factor:g}×; ONNX "
            f"{report.exact_max_abs_diff:.2e}, transformers {report.reference_error:.2e})"
        )
    return None


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


def _batch_diff(
    references: References, generator: Generator
) -> tuple[float, list[tuple[float, float]]]:
    """The same batch prefilled through ONNX (left-padded on the portable graph), compared at
    real positions. → (max |Δ| from transformers fp32, per row (ONNX's, transformers fp32's) max
    |Δ| from float64 — empty without float64 logits). A row's real positions are its prompt's
    alone, so each prompt's own float64 logits serve its row."""
    prompts = [ref.ids for ref in references.prompts]
    _, mask, _ = left_padded(prompts, _ANY_PAD)
    onnx_logits = DecodeState.for_model(generator.model).prefill(prompts, all_logits=True)
    real = mask.astype(bool)  # [B, T]
    diff = float(np.abs(onnx_logits[real].astype(np.float32) - references.batch_logits[real]).max())
    rows = []
    for row, ref in enumerate(references.prompts):
        if ref.exact is None:
            return diff, []
        exact, prompt = ref.exact[: len(ref.ids)], len(ref.ids)
        onnx_row = onnx_logits[row][real[row]].astype(np.float32)  # [T_row, V]
        rows.append(
            (
                float(np.abs(onnx_row - exact).max()),
                float(np.abs(ref.logits[:prompt] - exact).max()),
            )
        )
    return diff, rows


@contextmanager
def _in_float64(model: Any) -> Iterator[None]:
    """Run `model`'s forward in float64, one module's weights in float64 at a time: a module with
    parameters of its own gets float64 copies just before its forward and its own tensors back
    just after — the same storage (mapped checkpoint pages stay as they are), so memory grows by
    one module's float64 copy, never by a second model. A parameter entered again while in
    float64 (a re-entrant forward, a weight shared by nested modules) is restored on the last
    exit, and every one is restored whatever the forward raises."""
    originals: dict[Any, torch.Tensor] = {}  # parameter → its float32 data, while in use
    depth: Counter = Counter()

    def up(module: Any, _args: Any) -> None:  # a hook's return value would replace the input
        for parameter in module.parameters(recurse=False):
            if not depth[parameter]:
                originals[parameter] = parameter.data
                parameter.data = parameter.data.double()
            depth[parameter] += 1

    def down(module: Any, _args: Any, _out: Any) -> None:
        for parameter in module.parameters(recurse=False):
            depth[parameter] -= 1
            if not depth[parameter]:
                parameter.data = originals.pop(parameter)

    handles = []
    for module in model.modules():
        if next(module.parameters(recurse=False), None) is not None:
            handles += [module.register_forward_pre_hook(up), module.register_forward_hook(down)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for parameter, data in originals.items():  # left in float64 by a failed forward
            parameter.data = data


@torch.inference_mode()
def _exact_logits(model: Any, ids: list[int]) -> tuple[np.ndarray | None, str | None]:
    """transformers' forward of `ids` in float64 → (logits [T, V] float64, None), or (None, why)
    where it cannot run in float64 (`reorder_and_upcast_attn` computes its scores into a float32
    buffer; memory). GPT-Neo keeps its attention scores in float32 by design (transformers casts
    query and key up to float32 at every precision); the rest of the forward is float64."""
    try:
        with _in_float64(model):
            logits = model(torch.tensor([ids])).logits[0]
    except RuntimeError as error:
        return None, f"transformers' forward failed in float64 ({first_line(error)})"
    if logits.dtype != torch.float64:
        return None, f"transformers' float64 forward returned {logits.dtype} logits"
    return logits.numpy(), None
