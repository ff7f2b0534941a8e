"""`make demo`: export the bundled trained GPT-2 checkpoint (training/checkpoints/gpt2, trained on
Python's documentation) to an int8 model folder with `ortgen export` — progress shown, parity
checked against transformers — then stream a continuation and report tokens/s.

    python examples/demo.py [OUTPUT_DIR]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "training" / "checkpoints" / "gpt2"
PROMPT = "The built-in function"


def main(output: Path) -> None:
    if not (output / "ortgen.json").is_file():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ortgen",
                "export",
                str(CHECKPOINT),
                str(output),
                "--precision",
                "int8",
            ],
            check=True,
        )
    from ortgen import Generator

    generator = Generator.from_dir(output, threads=2)
    print(f"\n{PROMPT}", end="", flush=True)
    start, tokens = time.perf_counter(), 0
    options = dict(max_new_tokens=80, do_sample=True, top_k=40, temperature=0.8, seed=1)
    for piece in generator.stream(PROMPT, **options):
        print(piece, end="", flush=True)
    seconds = time.perf_counter() - start
    tokens = len(generator.generate_ids(generator.encode(PROMPT), **options))
    print(
        f"\n\n{tokens} tokens in {seconds:.2f} s: {tokens / seconds:.0f} tokens/s "
        "(5M-parameter GPT-2, int8, 2 threads)"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo-model"))
