"""transformers as the oracle for an exported folder: prefill logits of one prompt and its greedy
continuation, compared with ortgen's runtime directly (independently of the export's own check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from ortgen import Generator
from ortgen.decode_state import DecodeState
from ortgen_export.parity import PURE_GREEDY, THRESHOLDS

ATOL = THRESHOLDS["fp32"].max_abs_diff
NEW_TOKENS = 12


def reference_model(checkpoint: Path):
    """The checkpoint in fp32 (whatever its stored dtype) with eager attention: the semantics
    checkpoints were trained with (SDPA ignores scale_attn_by_inverse_layer_idx)."""
    return AutoModelForCausalLM.from_pretrained(
        checkpoint, attn_implementation="eager", dtype=torch.float32
    ).eval()


def assert_equal_to_transformers(folder: Path, checkpoint: Path, prompt_length: int = 20) -> None:
    """Prefill logits within the fp32 tolerance and identical greedy ids, for each graph of the
    folder (the in-place KV graph ortgen runs, and the portable model.onnx)."""
    model = reference_model(checkpoint)
    generators = [Generator.from_dir(folder, threads=1)]
    if generators[0].model.graph != "portable":
        generators.append(Generator.from_dir(folder, threads=1, graph="portable"))
    vocab = generators[0].manifest.vocab_size
    ids = np.random.default_rng(prompt_length).integers(1, vocab, size=prompt_length).tolist()
    config = GenerationConfig(
        max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=0
    )
    with torch.inference_mode():
        expected = model(torch.tensor([ids])).logits.numpy()  # [1, T, V]
        greedy = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            generation_config=config,
        )[0, len(ids) :].tolist()
    options = {**PURE_GREEDY, "max_new_tokens": NEW_TOKENS}
    for generator in generators:
        logits = DecodeState.for_model(generator.model).prefill([ids], all_logits=True)  # [1, T, V]
        assert np.abs(logits - expected).max() <= ATOL
        assert generator.generate_ids(ids, **options) == greedy
