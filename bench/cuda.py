"""fp16 on a CUDA GPU: ortgen against transformers (PyTorch fp16, the same GPU), one process,
rounds interleaved, medians. `python -m bench.cuda --out FILE.json` where onnxruntime-gpu and a
CUDA PyTorch are installed (never part of `make bench`: CI and the CPU bench have no GPU).

Systems: `ortgen-fp16` (the fp16 folder's graph on CUDAExecutionProvider, cache kept on the GPU
between steps); `ortgen-fp16-hostcache` (the same graph with the cache bound to host memory, as
ortgen did before 2026-12-04: every step copies it to the GPU and back); `torch-fp16`
(transformers' generate, fp16, its default attention). Workloads are the CPU bench's W1, W3, W4
and W5 shapes (bench.measure) plus `b32`, 32 prompts of 128 tokens, 128 new tokens each."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import checkpoints, measure
from bench.measure import NUCLEUS, SEED, W1, W3, W4, W5, prompts, timed

WORKLOADS = {"w1": W1, "w3": W3, "w4": W4, "w5": W5, "b32": dict(batch=32, prompt=128, new=128)}


class Ortgen:
    def __init__(self, folder: Path, device: str, host_cache: bool = False) -> None:
        from ortgen import Generator

        self.generator = Generator.from_dir(folder, device=device)
        self.host_cache = host_cache

    def run(self, batch, new: int, sampling: dict | None) -> int:
        from ortgen import decode_state

        options = dict(top_k=0, seed=SEED, **sampling) if sampling else {}
        on_cuda = decode_state._on_cuda
        if self.host_cache:  # the cache in host memory, as before (module-wide: one thread only)
            decode_state._on_cuda = lambda session: False
        try:
            out = self.generator.generate_ids(
                batch, max_new_tokens=new, do_sample=bool(sampling), ignore_eos=True, **options
            )
        finally:
            decode_state._on_cuda = on_cuda
        return sum(map(len, out))


class Torch(measure.Torch):
    """transformers' generate in fp16 on `device` (bench.measure's CPU runner, moved)."""

    def __init__(self, checkpoint: Path, device: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        self.torch, self.device = torch, device
        self.model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float16)
        self.model = self.model.to(device).eval()

    def run(self, batch, new: int, sampling: dict | None) -> int:
        produced = super().run(batch, new, sampling)
        if self.device == "cuda":
            self.torch.cuda.synchronize()
        return produced


def tokens_per_second(runner, workload: str) -> float:
    shape = WORKLOADS[workload]
    batch, new, sampling = prompts(shape["batch"], shape["prompt"]), shape["new"], None
    if shape is W5:
        sampling = NUCLEUS
    if workload == "w4":  # decode only: prefill and first token timed apart and subtracted
        first = timed(runner, batch, 1, sampling)
        return len(batch) * (new - 1) / (timed(runner, batch, new, sampling) - first)
    return len(batch) * new / timed(runner, batch, new, sampling)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--arch", default="gpt2", choices=["gpt2", "gpt_neo"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of this script")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ortgen-cuda")
    args = parser.parse_args()

    import torch

    from ortgen_export import ExportOptions, export_model

    checkpoint = checkpoints.build(args.work / f"{args.arch}-checkpoint", args.arch)
    folder = args.work / f"{args.arch}-fp16"
    start = time.perf_counter()
    if not (folder / "ortgen.json").is_file():
        export_model(str(checkpoint), folder, ExportOptions(precision="fp16"))
    print(f"export {time.perf_counter() - start:.0f} s", file=sys.stderr)
    systems = {
        "ortgen-fp16": lambda: Ortgen(folder, args.device),
        "ortgen-fp16-hostcache": lambda: Ortgen(folder, args.device, host_cache=True),
        "torch-fp16": lambda: Torch(checkpoint, args.device),
    }
    runners = {name: make() for name, make in systems.items()}
    for runner in runners.values():  # warm-up: CUDA kernels load and autotune on first use
        for workload in WORKLOADS:
            shape = WORKLOADS[workload]
            runner.run(prompts(shape["batch"], shape["prompt"]), 4, None)
    values = {(s, w): [] for s in runners for w in WORKLOADS}
    for round_ in range(args.rounds):
        for workload in WORKLOADS:
            for name, runner in runners.items():
                values[name, workload].append(tokens_per_second(runner, workload))
        print(f"round {round_ + 1} done", file=sys.stderr)
    result = {
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
        "arch": args.arch,
        "rounds": args.rounds,
        "tok_s": {f"{s} {w}": statistics.median(v) for (s, w), v in values.items()},
        "all": {f"{s} {w}": v for (s, w), v in values.items()},
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(f"| workload | {' | '.join(runners)} | ortgen ÷ torch |")
    print(f"|---|{'---|' * len(runners)}---|")
    for workload in WORKLOADS:
        cells = [result["tok_s"][f"{s} {workload}"] for s in runners]
        ratio = cells[0] / result["tok_s"][f"torch-fp16 {workload}"]
        print(f"| {workload} | {' | '.join(f'{c:.0f}' for c in cells)} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
