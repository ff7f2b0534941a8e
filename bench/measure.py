"""One measurement in a fresh process: `python -m bench.measure SYSTEM PATH WORKLOAD` prints one
JSON line {value, unit, load_s, peak_rss_mb}. Each system imports only its own runtime, so it can
run in the environment that has it (ortgen: the project's; peers: bench/.venv).
`python -m bench.measure probe - bw` is the read-bandwidth probe (GB/s)."""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

THREADS = 2
NUCLEUS = dict(top_p=0.9, temperature=0.8)  # W5: top-k off, no min-p, no repetition penalty
W1 = dict(batch=1, prompt=16, new=128)  # tokens/s, prefill included
W2 = dict(batch=1, prompt=512, new=1)  # time to first token, ms
W3 = dict(batch=8, prompt=16, new=64)  # total tokens/s
W4 = dict(batch=1, prompt=512, new=256)  # decode tokens/s late in a long context, prefill excluded
W5 = dict(batch=1, prompt=16, new=128, sampling=NUCLEUS)  # tokens/s, prefill included
PASTS = (16, 128, 512, 900)  # scaling table: one decode step's time after a prompt this long
STEPS = 32  # decode steps timed per past length (median)
WORKLOADS = {
    "w1": W1,
    "w2": W2,
    "w3": W3,
    "w3seq": W3,  # W3's prompts one at a time
    "w4": W4,
    "w5": W5,
    **{f"past{p}": dict(batch=1, prompt=p, new=STEPS + 1) for p in PASTS},
    # ortgen only: a step at past 900 ÷ at past 16, the two alternated in one process
    "flat": dict(batch=1, prompt=PASTS[-1], new=STEPS + 1),
}
SEED = 0


def prompts(batch: int, length: int) -> list[list[int]]:
    """Distinct deterministic token ids (the synthetic vocabulary has no meaning anyway)."""
    return [[1000 + (row * 131 + i * 7) % 40000 for i in range(length)] for row in range(batch)]


class Ortgen:
    def __init__(self, path: str, spin: bool | int = True) -> None:
        from ortgen import Generator

        self.generator = Generator.from_dir(path, threads=THREADS, spin=spin)

    def run(self, batch: list[list[int]], new: int, sampling: dict | None = None) -> int:
        options = dict(top_k=0, seed=SEED, **sampling) if sampling else {}
        out = self.generator.generate_ids(
            batch,
            max_new_tokens=new,
            do_sample=bool(sampling),
            repetition_penalty=1.0,
            ignore_eos=True,
            **options,
        )
        return sum(map(len, out))

    def step_ms(self, past: int) -> float:
        from ortgen.benchmark import measure

        speed = measure(self.generator, prompt_tokens=past, new_tokens=STEPS + 1, rounds=1)
        return speed.token_latency_ms["p50"]

    def flatness(self) -> float:
        """Decode step time late in a long context ÷ early, in one process: two decode states, one
        after a 900-token prompt and one after 16, their greedy steps alternated (the machine's
        speed drifts over seconds, which separate processes measure apart); the ratio of the two
        states' median step times."""
        import numpy as np

        from ortgen.decode_state import DecodeState

        states, logits, times = [], [], ([], [])
        for past in (PASTS[0], PASTS[-1]):
            states.append(DecodeState.for_model(self.generator.model))
            logits.append(states[-1].prefill(prompts(1, past)))
        for step in range(STEPS):
            for k in (0, 1) if step % 2 == 0 else (1, 0):
                ids = np.argmax(logits[k], axis=-1)
                start = time.perf_counter()
                logits[k] = states[k].step(ids)
                times[k].append(time.perf_counter() - start)
        return statistics.median(times[1]) / statistics.median(times[0])


class LlamaCpp:
    """llama.cpp through llama-cpp-python: token ids in, its own C++ samplers."""

    def __init__(self, path: str) -> None:
        from llama_cpp import Llama

        self.llm = Llama(
            model_path=path,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            n_batch=512,
            n_ctx=1024,
            seed=SEED,
            verbose=False,
        )

    def run(self, batch: list[list[int]], new: int, sampling: dict | None = None) -> int:
        if sampling:  # top_k ≤ 0, min_p 0, typical_p 1 and repeat_penalty 1 are no-ops there;
            # its fixed chain applies top-p before temperature (transformers: after): same cost
            options = dict(top_k=0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0)
            options.update(top_p=sampling["top_p"], temp=sampling["temperature"])
        else:
            options = dict(temp=0.0)  # its greedy sampler
        produced = 0
        for row in batch:  # no batch API: one prompt at a time
            self.llm.reset()  # or it reuses a matching prompt prefix (FIELD.md trap 17)
            count = 0
            for count, _ in enumerate(self.llm.generate(row, **options), 1):
                if count == new:
                    break
            produced += count
        return produced

    def step_ms(self, past: int) -> float:
        """Median time of one greedy decode step (eval of one token + its greedy pick)."""
        self.llm.reset()
        self.llm.eval(prompts(1, past)[0])
        token, steps = self.llm.sample(temp=0.0), []
        for _ in range(STEPS):
            start = time.perf_counter()
            self.llm.eval([token])
            token = self.llm.sample(temp=0.0)
            steps.append(time.perf_counter() - start)
        return statistics.median(steps) * 1e3


class Torch:
    device = "cpu"

    def __init__(self, path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(THREADS)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(path).eval()

    def run(self, batch: list[list[int]], new: int, sampling: dict | None = None) -> int:
        from transformers import GenerationConfig

        ids = self.torch.tensor(batch, device=self.device)
        options = dict(do_sample=True, top_k=0, **sampling) if sampling else dict(do_sample=False)
        config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, pad_token_id=0, **options)
        self.torch.manual_seed(SEED)
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

    def run(self, batch: list[list[int]], new: int, sampling: dict | None = None) -> int:
        starts = [[self.tokens[i] for i in row] for row in batch]
        if sampling:  # top-k 0: the full distribution
            options = dict(sampling_topk=0, sampling_topp=sampling["top_p"])
            options.update(sampling_temperature=sampling["temperature"])
        else:
            options = dict(sampling_topk=1)
        results = self.generator.generate_batch(
            starts,
            max_length=new,
            min_length=new,
            include_prompt_in_result=False,
            end_token=[],
            **options,
        )
        return sum(len(r.sequences_ids[0]) for r in results)


def load(system: str, path: str):
    if system.startswith("ortgen"):  # "ortgen-int8+nospin", "+spin100": Generator's spin
        spin = system.partition("+")[2]
        return Ortgen(path, False if spin == "nospin" else int(spin[4:]) if spin else True)
    if system.startswith("llamacpp"):
        return LlamaCpp(path)
    if system == "torch":
        return Torch(path)
    if system == "optimum":
        return Optimum(path)
    return CTranslate2(path, compute_type=system.removeprefix("ct2-").replace("fp32", "float32"))


def bandwidth(gib: int = 1, repeats: int = 5) -> float:
    """Read bandwidth in GB/s with THREADS threads, each reducing its share of a `gib` GiB array
    (numpy's reductions release the GIL; max is vector code cheap enough to wait on memory)."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    data = np.ones(gib * 2**30 // 4, dtype=np.float32)  # written once: every page resident
    shares = np.array_split(data, THREADS)
    best = float("inf")
    with ThreadPoolExecutor(THREADS) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(np.maximum.reduce, shares))
            best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9


def timed(runner, batch: list[list[int]], new: int, sampling: dict | None) -> float:
    """Seconds for one generate call, after checking it produced every token asked for."""
    start = time.perf_counter()
    produced = runner.run(batch, new, sampling)
    seconds = time.perf_counter() - start
    if produced != len(batch) * new:
        raise SystemExit(f"produced {produced} tokens, expected {len(batch) * new}")
    return seconds


def value_of(runner, workload: str, shape: dict) -> tuple[float, str]:
    batch, new = prompts(shape["batch"], shape["prompt"]), shape["new"]
    sampling = shape.get("sampling")
    if workload.startswith("past"):
        return runner.step_ms(shape["prompt"]), "ms"
    if workload == "flat":
        return runner.flatness(), "×"
    if workload == "w2":
        return timed(runner, batch, new, sampling) * 1e3, "ms"
    if workload == "w4":  # prefill and first token timed apart, then subtracted: every system alike
        first = timed(runner, batch, 1, sampling)
        return len(batch) * (new - 1) / (timed(runner, batch, new, sampling) - first), "tok/s"
    if workload == "w3seq":
        return len(batch) * new / sum(timed(runner, [row], new, sampling) for row in batch), "tok/s"
    return len(batch) * new / timed(runner, batch, new, sampling), "tok/s"


def main(system: str, path: str, workload: str) -> None:
    if system == "probe":
        print(json.dumps({"value": bandwidth(), "unit": "GB/s", "load_s": 0, "peak_rss_mb": 0}))
        return
    shape = WORKLOADS[workload]
    start = time.perf_counter()
    runner = load(system, path)
    load_s = time.perf_counter() - start
    runner.run(prompts(shape["batch"], 8), 4, shape.get("sampling"))  # warm-up
    value, unit = value_of(runner, workload, shape)
    print(
        json.dumps({"value": value, "unit": unit, "load_s": load_s, "peak_rss_mb": peak_rss_mb()})
    )


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux keeps ru_maxrss across
    exec, so a child of a big parent (one that just built a checkpoint with torch) would report
    the parent's peak; VmHWM belongs to the address space exec made."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main(*sys.argv[1:4])
