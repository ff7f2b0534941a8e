"""Random-weight checkpoints with the real gpt2 (124M) and gpt-neo-125M configs — the same cost as
the released weights, built offline — and a synthetic tokenizer whose ids cover the vocabulary."""

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
}


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


def build(folder: Path, architecture: str, seed: int = 0) -> Path:
    """save_pretrained folder for `architecture` ("gpt2" or "gpt_neo"); reused when present."""
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
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**CONFIGS["gpt2"], **ids))
    else:
        model = GPTNeoForCausalLM(GPTNeoConfig(**CONFIGS["gpt_neo"], **ids))
    model.save_pretrained(folder)
    PreTrainedTokenizerFast(
        tokenizer_object=synthetic_tokenizer(), bos_token=EOS, eos_token=EOS, unk_token=EOS
    ).save_pretrained(folder)
    return folder
