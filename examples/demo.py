"""`make demo`: build a random-weight checkpoint with the real gpt2 (124M) config, export it with
`ortgen export` (parity-checked against transformers), then stream text from it and report tokens/s.

Random weights make gibberish text (the tokenizer is synthetic too); the cost per token is the real
model's. A trained default model is tracked separately.

    python examples/demo.py OUTPUT_DIR
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.checkpoints import build  # noqa: E402


def main(output: Path) -> None:
    checkpoint = build(output.with_name(output.name + "-checkpoint"), "gpt2")
    if not (output / "ortgen.json").is_file():
        subprocess.run(
            [sys.executable, "-m", "ortgen", "export", str(checkpoint), str(output)], check=True
        )
    from ortgen import Generator

    generator = Generator.from_dir(output, threads=2)
    prompt = "Once upon a time"
    print(f"\nprompt: {prompt!r}\n")
    start, pieces = time.perf_counter(), []
    for piece in generator.stream(prompt, max_new_tokens=64, ignore_eos=True):
        pieces.append(piece)
    seconds = time.perf_counter() - start
    text = "".join(pieces)
    print(text[:400] + ("…" if len(text) > 400 else ""))
    print(
        f"\n64 tokens in {seconds:.2f} s: {64 / seconds:.1f} tokens/s (gpt2 124M, fp32, 2 threads)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-model"))
