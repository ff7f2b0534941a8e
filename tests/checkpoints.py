"""Tiny random GPT-2 and GPT-Neo checkpoints with a locally trained byte-level BPE tokenizer, for
tests that must not reach the hub. GPT-Neo gets global and local layers with a window shorter than
the test sequences."""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village by the sea, there lived a fisherman.",
    "In the beginning of the story, the old lighthouse keeper told tales of storms.",
    "Numbers like 1905, 2048 and 3.14159 appear in text too.",
    "Caf\u00e9, na\u00efve, \u00fcber: accents,",
    "and emoji \U0001f600 \U0001f680 and \u65e5\u672c\u8a9e.",
] * 20
EOS = "<|endoftext|>"
WINDOW = 8  # GPT-Neo local window: shorter than the test prompts
TRAIN_STEPS = 150  # a short fit to CORPUS: peaked, structured predictions like a real model's


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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS + [training_text()], trainer)
    return tokenizer


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
    fit(model, tokenizer.encode(training_text()).ids, TRAIN_STEPS)
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS
    ).save_pretrained(folder)
    return folder


def fit(model, ids: list[int], steps: int, length: int = 48, batch: int = 16) -> None:
    """A few hundred AdamW steps of next-token prediction on `ids` (CPU, seconds)."""
    import torch

    data = torch.tensor(ids)
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - length - 1, (batch,), generator=generator)
        inputs = torch.stack([data[s : s + length] for s in starts])
        loss = model(inputs, labels=inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
