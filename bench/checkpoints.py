"""Random-weight checkpoints with the real configs of gpt2 (124M), gpt-neo-125M and the large
siblings gpt2-large (774M) and gpt-neo-1.3B — the same cost as the released weights, built
offline — and a synthetic tokenizer whose ids cover the vocabulary."""

from __future__ import annotations

from pathlib import Path

EOS = "<|endoftext|>"
VOCAB = 50257

# The released configs' shape fields (the hub is unreachable here).
CONFIGS = {
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, n_positions=1024, n_ctx=1024),
    "gpt_neo": dict(
        num_layers=12,
        num_heads=12,
        hidden_size=768,
        max_position_embeddings=2048,
        attention_types=[[["global", "local"], 6]],
        window_size=256,
    ),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, n_positions=1024, n_ctx=1024),
    "gpt-neo-1.3B": dict(
        num_layers=24,
        num_heads=16,
        hidden_size=2048,
        max_position_embeddings=2048,
        attention_types=[[["global", "local"], 12]],
        window_size=256,
    ),
}


def architecture(name: str) -> str:
    """The model_type of a CONFIGS entry: "gpt2" or "gpt_neo"."""
    return "gpt2" if name.startswith("gpt2") else "gpt_neo"


def synthetic_tokenizer():
    """Byte-level BPE without merges: 256 byte symbols, filler tokens up to VOCAB, EOS last."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    for i in range(len(vocab), VOCAB - 1):
        vocab[f"tok{i}"] = i
    vocab[EOS] = VOCAB - 1
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([EOS])
    return tokenizer


def build(folder: Path, name: str, seed: int = 0) -> Path:
    """save_pretrained folder for the CONFIGS entry `name`; reused when present."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoConfig,
        GPTNeoForCausalLM,
        PreTrainedTokenizerFast,
    )

    torch.manual_seed(seed)
    ids = dict(vocab_size=VOCAB, bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1)
    if architecture(name) == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**CONFIGS[name], **ids))
    else:
        model = GPTNeoForCausalLM(GPTNeoConfig(**CONFIGS[name], **ids))
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=synthetic_tokenizer(), bos_token=EOS, eos_token=EOS, unk_token=EOS
    ).save_pretrained(folder)
    return folder
