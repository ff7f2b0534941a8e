"""Train the small default GPT-2 / GPT-Neo checkpoints on Python's own documentation (see
corpus.py), on CPU, reproducibly: fixed seeds, fixed data order, a fixed number of steps.

    python -m training.train --arch gpt2 --out training/checkpoints/gpt2 [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

EOS = "<|endoftext|>"
VOCAB = 8192
CONTEXT = 256
WINDOW = 64  # GPT-Neo local layers
SIZES = dict(layers=4, heads=4, width=256)


def train_tokenizer(documents: list[str], vocab_size: int = VOCAB):
    """Byte-level BPE (GPT-2's scheme) with EOS as its one special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(documents, trainer)
    return tokenizer


def encode(tokenizer, text: str) -> list[int]:
    """Documents joined by EOS, as GPT-2 was trained."""
    eos = tokenizer.token_to_id(EOS)
    ids: list[int] = []
    for doc in text.split("\n\n"):
        ids += tokenizer.encode(doc).ids + [eos]
    return ids


def build_model(arch: str, eos: int, sizes: dict):
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoConfig, GPTNeoForCausalLM

    common = dict(vocab_size=VOCAB, bos_token_id=eos, eos_token_id=eos)
    if arch == "gpt2":
        return GPT2LMHeadModel(
            GPT2Config(
                n_layer=sizes["layers"],
                n_head=sizes["heads"],
                n_embd=sizes["width"],
                n_positions=CONTEXT,
                **common,
            )
        )
    pattern = [[["global", "local"], sizes["layers"] // 2]]
    return GPTNeoForCausalLM(
        GPTNeoConfig(
            num_layers=sizes["layers"],
            num_heads=sizes["heads"],
            hidden_size=sizes["width"],
            max_position_embeddings=CONTEXT,
            attention_types=pattern,
            window_size=WINDOW,
            **common,
        )
    )


def perplexity(model, ids: list[int], window: int = CONTEXT, stride: int = CONTEXT // 2) -> float:
    """Sliding-window perplexity, every token after the first scored once."""
    import torch

    total, count, scored, end = 0.0, 0, 1, min(window, len(ids))
    with torch.inference_mode():
        while True:
            begin = max(0, end - window)
            chunk = torch.tensor([ids[begin:end]])
            logp = torch.log_softmax(model(chunk).logits[0].double(), -1)
            first = scored - begin
            total += logp[first - 1 : -1].gather(1, chunk[0, first:, None]).sum().item()
            count += end - scored
            if end == len(ids):
                return math.exp(-total / count)
            scored, end = end, min(end + stride, len(ids))


def fit(model, data, steps: int, batch: int, length: int, lr: float, seed: int = 0) -> None:
    """AdamW next-token training on random windows of `data` (1-D ids), linear warmup then cosine
    decay, gradients clipped at 1; leaves the model in eval mode."""
    import torch

    data = torch.as_tensor(data)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - length - 1, (batch,), generator=order)
        inputs = torch.stack([data[s : s + length] for s in starts])
        loss = model(inputs, labels=inputs).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    model.eval()


def train(
    arch: str,
    out: Path,
    steps: int,
    batch: int = 16,
    length: int = 128,
    seed: int = 0,
    sizes: dict | None = None,
    text: tuple[str, str] | None = None,
) -> dict:
    import torch
    from transformers import GenerationConfig, PreTrainedTokenizerFast

    from training.corpus import split

    torch.manual_seed(seed)
    torch.set_num_threads(2)
    train_text, held_text = text or split()
    tokenizer = train_tokenizer(train_text.split("\n\n"))
    data = torch.tensor(encode(tokenizer, train_text))
    held = encode(tokenizer, held_text)
    model = build_model(arch, tokenizer.token_to_id(EOS), sizes or SIZES)
    started = time.time()
    fit(model, data, steps, batch, length, lr=2e-3, seed=seed)
    minutes = (time.time() - started) / 60
    report = {
        "arch": arch,
        "steps": steps,
        "batch": batch,
        "length": length,
        "seed": seed,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": len(data),
        "held_out_tokens": len(held),
        "minutes": round(minutes, 1),
        "held_out_perplexity": round(perplexity(model, held), 3),
    }
    out.mkdir(parents=True, exist_ok=True)
    model.half().save_pretrained(out)  # fp16 on disk: half the size; export reads it as fp32
    PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS
    ).save_pretrained(out)
    GenerationConfig(
        max_new_tokens=64,
        do_sample=True,
        top_k=40,
        temperature=0.8,
        repetition_penalty=1.1,
        bos_token_id=tokenizer.token_to_id(EOS),
        eos_token_id=tokenizer.token_to_id(EOS),
    ).save_pretrained(out)
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", choices=["gpt2", "gpt_neo"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(train(args.arch, args.out, args.steps, seed=args.seed), indent=2))


if __name__ == "__main__":
    main()
