"""Tiny GPT-2 and GPT-Neo checkpoints, fitted for a few seconds to template text with the training
code of the default model, and a byte-level BPE tokenizer trained locally — for tests that must not
reach the hub. GPT-Neo gets global and local layers, a window shorter than the test sequences."""

from __future__ import annotations

from pathlib import Path

import training.train

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the sea, there lived a fisherman.",
    "In the beginning of the story, the old lighthouse keeper told tales of storms.",
    "Numbers like 1905, 2048 and 3.14159 appear in text too.",
    "Caf\u00e9, na\u00efve, \u00fcber: accents,",
    "and emoji \U0001f600 \U0001f680 and \u65e5\u672c\u8a9e.",
] * 20
EOS = training.train.EOS
WINDOW = 8  # GPT-Neo local window: shorter than the test prompts
TRAIN_STEPS = 150  # a short fit to CORPUS: peaked, structured predictions like a real model's
QUANTIZED = ("int8", "int4")
PRECISIONS = ("fp16", *QUANTIZED)  # the reduced ones each checkpoint is exported in


def training_text(sentences: int = 400, seed: int = 0) -> str:
    """Template sentences: enough structure for a tiny model to learn in seconds."""
    import random

    rng = random.Random(seed)
    subjects = ["The old fisherman", "A small child", "The lighthouse keeper", "My neighbour"]
    verbs = ["told stories about", "walked along", "was afraid of", "dreamed of"]
    objects = ["the stormy sea", "distant islands", "the harbour at night", "strange lights"]
    lines = [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}."
        for _ in range(sentences)
    ]
    return " ".join(lines)


def train_tokenizer(vocab_size: int = 400):
    return training.train.train_tokenizer(CORPUS + [training_text()], vocab_size)


def build_checkpoint(folder: Path, architecture: str, seed: int = 0) -> Path:
    """Write a save_pretrained folder (weights, config, tokenizer) for `architecture`."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoConfig,
        GPTNeoForCausalLM,
        PreTrainedTokenizerFast,
    )

    tokenizer = train_tokenizer()
    eos_id = tokenizer.token_to_id(EOS)
    common = dict(vocab_size=tokenizer.get_vocab_size(), bos_token_id=eos_id, eos_token_id=eos_id)
    torch.manual_seed(seed)
    if architecture == "gpt2":
        config = GPT2Config(n_layer=2, n_head=4, n_embd=64, n_positions=128, **common)
        model = GPT2LMHeadModel(config)
    else:
        config = GPTNeoConfig(
            num_layers=2,
            attention_types=[[["global", "local"], 1]],
            window_size=WINDOW,
            hidden_size=64,
            num_heads=4,
            max_position_embeddings=128,
            **common,
        )
        model = GPTNeoForCausalLM(config)
    training.train.fit(
        model, tokenizer.encode(training_text()).ids, TRAIN_STEPS, batch=16, length=48, lr=3e-3
    )
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS
    ).save_pretrained(folder)
    return folder


def random_checkpoint(
    folder: Path, architecture: str, tokenizer, dtype=None, save: dict | None = None, **config
) -> Path:
    """A 2-layer, width-32 checkpoint with random weights (no training: parity needs none) and
    `config` overriding transformers' config defaults, stored in `dtype` (default fp32) with
    save_pretrained's options `save` (sharding, .bin); returns the folder."""
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoConfig,
        GPTNeoForCausalLM,
        PreTrainedTokenizerFast,
    )

    eos_id = tokenizer.token_to_id(EOS)
    common = dict(
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        initializer_range=0.1,  # peaked logits: greedy paths without near-ties
    )
    torch.manual_seed(0)
    if architecture == "gpt2":
        defaults = dict(n_layer=2, n_head=4, n_embd=32, n_positions=64)
        model = GPT2LMHeadModel(GPT2Config(**{**defaults, **common, **config}))
    else:
        defaults = dict(
            num_layers=2,
            attention_types=[[["global", "local"], 1]],
            window_size=WINDOW,
            hidden_size=32,
            num_heads=4,
            max_position_embeddings=64,
        )
        model = GPTNeoForCausalLM(GPTNeoConfig(**{**defaults, **common, **config}))
    model.to(dtype or torch.float32).save_pretrained(folder, **(save or {}))
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS
    ).save_pretrained(folder)
    return folder
