"""One measurement in a fresh process: `python -m bench.measure SYSTEM PATH WORKLOAD` prints one
JSON line {value, unit, load_s, peak_rss_mb}. Each system imports only its own runtime, so it can
run in the environment that has it (ortgen: the project's; peers: bench/.venv)."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

THREADS = 2
W1 = dict(batch=1, prompt=16, new=128)  # decode tokens/s
W2 = dict(batch=1, prompt=512, new=1)  # time to first token, ms
W3 = dict(batch=8, prompt=16, new=64)  # total tokens/s
WORKLOADS = {"w1": W1, "w2": W2, "w3": W3, "w3seq": W3}  # w3seq: W3's prompts one at a time


def prompts(batch: int, length: int) -> list[list[int]]:
    """Distinct deterministic token ids (the synthetic vocabulary has no meaning anyway)."""
    return [[1000 + (row * 131 + i * 7) % 40000 for i in range(length)] for row in range(batch)]


class Ortgen:
    def __init__(self, path: str) -> None:
        from ortgen import Generator

        self.generator = Generator.from_dir(path, threads=THREADS)

    def run(self, batch: list[list[int]], new: int) -> int:
        out = self.generator.generate_ids(batch, max_new_tokens=new, ignore_eos=True)
        return sum(map(len, out))


class Torch:
    def __init__(self, path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(THREADS)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()

    def run(self, batch: list[list[int]], new: int) -> int:
        from transformers import GenerationConfig

        ids = self.torch.tensor(batch)
        config = GenerationConfig(
            max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
        )
        with self.torch.inference_mode():
            out = self.model.generate(
                ids, attention_mask=self.torch.ones_like(ids), generation_config=config
            )
        return (out.shape[1] - ids.shape[1]) * out.shape[0]


class Optimum(Torch):
    """optimum's ORTModelForCausalLM: ONNX Runtime underneath, torch for the loop (1 thread so
    its pool does not fight ONNX Runtime's)."""

    def __init__(self, path: str) -> None:
        import onnxruntime as ort
        import torch
        from optimum.onnxruntime import ORTModelForCausalLM

        torch.set_num_threads(1)
        self.torch = torch
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        self.model = ORTModelForCausalLM.from_pretrained(
            path, use_cache=True, provider="CPUExecutionProvider", session_options=options
        )


def has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class CTranslate2:
    def __init__(self, path: str, compute_type: str) -> None:
        import os

        if has_avx512():  # its AVX2 default on AMD is ~30% slower here: give it its best ISA
            os.environ.setdefault("CT2_FORCE_CPU_ISA", "AVX512")
        import ctranslate2

        self.generator = ctranslate2.Generator(
            path, device="cpu", compute_type=compute_type, intra_threads=THREADS
        )
        vocab = json.loads((Path(path) / "vocabulary.json").read_text())
        self.tokens = vocab

    def run(self, batch: list[list[int]], new: int) -> int:
        starts = [[self.tokens[i] for i in row] for row in batch]
        results = self.generator.generate_batch(
            starts,
            max_length=new,
            min_length=new,
            sampling_topk=1,
            include_prompt_in_result=False,
            end_token=[],
        )
        return sum(len(r.sequences_ids[0]) for r in results)


def load(system: str, path: str):
    if system.startswith("ortgen"):
        return Ortgen(path)
    if system == "torch":
        return Torch(path)
    if system == "optimum":
        return Optimum(path)
    return CTranslate2(path, compute_type=system.removeprefix("ct2-").replace("fp32", "float32"))


def main(system: str, path: str, workload: str) -> None:
    shape = WORKLOADS[workload]
    start = time.perf_counter()
    runner = load(system, path)
    load_s = time.perf_counter() - start
    batch = prompts(shape["batch"], shape["prompt"])
    runner.run(prompts(shape["batch"], 8), 4)  # warm-up: allocations, kernel selection
    start = time.perf_counter()
    if workload == "w3seq":
        produced = sum(runner.run([row], shape["new"]) for row in batch)
    else:
        produced = runner.run(batch, shape["new"])
    seconds = time.perf_counter() - start
    if produced != shape["batch"] * shape["new"]:
        raise SystemExit(
            f"{system} produced {produced} tokens, expected {shape['batch'] * shape['new']}"
        )
    value, unit = (seconds * 1e3, "ms") if workload == "w2" else (produced / seconds, "tok/s")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"value": value, "unit": unit, "load_s": load_s, "peak_rss_mb": peak}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
