"""The export's proof: the ONNX folder against transformers on the same checkpoint — logits for
the prefill and several cached steps, single prompts and a left-padded batch, and greedy generation
run by ortgen's own runtime loop."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ortgen import Generator, kv_cache
from ortgen.errors import ParityError

# Tolerances per precision: max |Δ logits| against transformers.
LOGITS_ATOL = {"fp32": 1e-4}
CACHED_STEPS = 4  # decode steps checked after each prefill
GREEDY_TOKENS = 32  # greedy tokens that must match transformers exactly

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
    tokens: int  # prompt length in tokens
    prefill_max_abs_diff: float  # over all prompt positions
    step_max_abs_diff: list[float]  # one per cached decode step
    greedy_match: bool  # GREEDY_TOKENS identical to transformers.generate


@dataclass
class ParityReport:
    precision: str
    atol: float
    max_abs_diff: float = 0.0  # worst over every check
    batch_max_abs_diff: float = 0.0  # left-padded batch of all prompts, real positions only
    prompts: list[PromptReport] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol and all(p.greedy_match for p in self.prompts)


def parity_prompts(tokenizer: Any, window: int | None, max_positions: int) -> list[list[int]]:
    """Token ids of the check prompts; the last is longer than a local-attention window."""
    budget = max_positions - GREEDY_TOKENS - 1
    long_len = min((window or 48) + 16, budget)
    long_ids: list[int] = []
    while len(long_ids) < long_len:
        long_ids += tokenizer(_LONG_TEXT)["input_ids"]
    prompts = [tokenizer(p)["input_ids"][:budget] for p in PROMPTS]
    return [*prompts, long_ids[:long_len]]


def check_parity(
    model: Any, folder: Path, prompts: list[list[int]], precision: str
) -> ParityReport:
    """Compare the exported folder with `model`; raise ParityError when out of tolerance."""
    generator = Generator.from_dir(folder)
    report = ParityReport(precision=precision, atol=LOGITS_ATOL[precision])
    for ids in prompts:
        prefill, steps = _logit_diffs(model, generator, ids)
        greedy = _greedy_match(model, generator, ids)
        report.prompts.append(PromptReport(len(ids), prefill, steps, greedy))
    report.batch_max_abs_diff = _batch_diff(model, generator, prompts)
    report.max_abs_diff = max(
        [report.batch_max_abs_diff]
        + [max(p.prefill_max_abs_diff, *p.step_max_abs_diff) for p in report.prompts]
    )
    if not report.passed:
        raise ParityError(_failure(report))
    return report


def report_dict(report: ParityReport) -> dict[str, Any]:
    return {**asdict(report), "passed": report.passed}


def _failure(report: ParityReport) -> str:
    mismatched = sum(not p.greedy_match for p in report.prompts)
    return (
        f"parity check failed: max |Δ logits| {report.max_abs_diff:.2e} (tolerance "
        f"{report.atol:.0e}), greedy mismatch on {mismatched}/{len(report.prompts)} prompts; "
        "the export does not reproduce transformers — report this with the checkpoint's config"
    )


@torch.inference_mode()
def _logit_diffs(model: Any, generator: Generator, ids: list[int]) -> tuple[float, list[float]]:
    """Prefill + CACHED_STEPS greedy steps through both, feeding the reference's choices."""
    input_ids = np.asarray([ids], dtype=np.int64)  # [1, T]
    mask = np.ones_like(input_ids)
    positions = kv_cache.prefill_positions(mask)
    onnx_logits, past = generator.forward(
        input_ids, mask, positions, kv_cache.empty_past(generator.manifest, 1)
    )
    out = model(torch.from_numpy(input_ids), use_cache=True)
    prefill = float(np.abs(onnx_logits - out.logits.numpy()).max())
    steps, cache = [], out.past_key_values
    for _ in range(CACHED_STEPS):
        next_id = out.logits[:, -1].argmax(-1, keepdim=True)  # [1, 1]
        mask = kv_cache.extend_mask(mask)
        out = model(
            next_id, past_key_values=cache, attention_mask=torch.from_numpy(mask), use_cache=True
        )
        cache = out.past_key_values
        onnx_logits, past = generator.forward(
            next_id.numpy(), mask, kv_cache.next_positions(mask), past
        )
        steps.append(float(np.abs(onnx_logits - out.logits.numpy()).max()))
    return prefill, steps


@torch.inference_mode()
def _greedy_match(model: Any, generator: Generator, ids: list[int]) -> bool:
    from transformers import GenerationConfig

    config = GenerationConfig(
        max_new_tokens=GREEDY_TOKENS,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=generator.pad_id,
    )
    expected = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        generation_config=config,
    )[0, len(ids) :].tolist()
    got = generator.generate_ids(
        ids, max_new_tokens=GREEDY_TOKENS, do_sample=False, ignore_eos=True
    )
    return got == expected


@torch.inference_mode()
def _batch_diff(model: Any, generator: Generator, prompts: list[list[int]]) -> float:
    """Left-padded prefill of all prompts together, compared where the mask is 1."""
    ids, mask = kv_cache.left_pad(prompts, generator.pad_id)  # [B, T]
    positions = kv_cache.prefill_positions(mask)
    onnx_logits, _ = generator.forward(
        ids, mask, positions, kv_cache.empty_past(generator.manifest, len(prompts))
    )
    ref = model(
        torch.from_numpy(ids),
        attention_mask=torch.from_numpy(mask),
        position_ids=torch.from_numpy(positions),
    ).logits.numpy()
    real = mask.astype(bool)  # [B, T]
    return float(np.abs(onnx_logits[real] - ref[real]).max())
