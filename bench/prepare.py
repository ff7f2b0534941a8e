"""The artefact each benchmarked system runs, built once under bench/work/ and reused: the
random-weight checkpoint, ortgen folders, optimum's export, CTranslate2 and GGUF conversions."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.measure import PASTS

BENCH = Path(__file__).parent
WORK = BENCH / "work"
PEERS = BENCH / ".venv" / "bin"  # made by `make bench-setup`
ORTGEN_PRECISIONS = ("fp32", "int8", "int4")
WORKLOAD_NAMES = ("w1", "w2", "w3", "w4", "w5")
SCALING = tuple(f"past{p}" for p in PASTS)
SCALED_SYSTEMS = ("ortgen-int8", "llamacpp-q8_0")  # the scaling table's two columns
PROBE = "probe"  # the read-bandwidth probe, measured like a system in every round


def sh(*command: str | Path) -> None:
    """Run a build step quietly; on failure show its last output lines."""
    done = subprocess.run(
        [str(c) for c in command], cwd=BENCH.parent, capture_output=True, text=True
    )
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise SystemExit(f"{' '.join(map(str, command[:4]))} … failed:\n{tail}")


def export_command(checkpoint: Path, folder: Path, precision: str) -> list[str]:
    """`ortgen export` of a random-weight checkpoint. Random weights have near-flat logits:
    quantized top-1 agreement says nothing about quality there (FIELD.md), so the agreement
    threshold is lifted for the benchmark."""
    relax = [] if precision == "fp32" else ["--min-agreement", "0"]
    command = [sys.executable, "-m", "ortgen", "export", str(checkpoint), str(folder)]
    return command + ["--precision", precision, "--force", *relax]


def ortgen_folder(checkpoint: Path, folder: Path, precision: str) -> Path:
    """Exported again whenever the export code changed since (a stale folder would measure an
    older ortgen)."""
    stamp = folder.with_name(folder.name + ".export-code")
    code = export_code_digest()
    if not (folder / "ortgen.json").is_file() or not stamp.is_file() or stamp.read_text() != code:
        sh(*export_command(checkpoint, folder, precision))
        stamp.write_text(code)
    return folder


def export_code_digest() -> str:
    """A digest of the sources an export depends on: the export stage and the native kernels."""
    digest = hashlib.blake2b(digest_size=16)
    root = BENCH.parent
    for path in sorted([*(root / "export").glob("*.py"), *(root / "native").glob("*.[ch]")]):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def optimum_folder(checkpoint: Path, folder: Path) -> Path:
    if not (folder / "model.onnx").is_file():
        code = (
            "import sys; from optimum.exporters.onnx import main_export; "
            "main_export(sys.argv[1], sys.argv[2], task='text-generation-with-past')"
        )
        sh(PEERS / "python", "-c", code, checkpoint, folder)
    return folder


def ct2_folder(checkpoint: Path, folder: Path, quantization: str) -> Path:
    if not (folder / "model.bin").is_file():
        options = ["--quantization", quantization, "--force"]
        converter = PEERS / "ct2-transformers-converter"
        sh(converter, "--model", checkpoint, "--output_dir", folder, *options)
    return folder


def gguf_file(checkpoint: Path, folder: Path, kind: str) -> Path:
    """llama.cpp's GGUF (bench/gguf_convert.py makes q8_0 and q4_0 together)."""
    path = folder / f"model-{kind}.gguf"
    if not path.is_file():
        sh(PEERS / "python", "-m", "bench.gguf_convert", checkpoint, folder)
    return path


def builders(arch: str, checkpoint: Path) -> dict[str, tuple[Path, Callable[[], Path]]]:
    """system → (its Python, a function building its artefact). CTranslate2 and llama.cpp
    have no GPT-Neo."""
    here, peers = Path(sys.executable), PEERS / "python"
    table: dict[str, tuple[Path, Callable[[], Path]]] = {"torch": (peers, lambda: checkpoint)}
    for p in ORTGEN_PRECISIONS:
        table[f"ortgen-{p}"] = (
            here,
            lambda p=p: ortgen_folder(checkpoint, WORK / f"{arch}-{p}", p),
        )
    table["optimum"] = (peers, lambda: optimum_folder(checkpoint, WORK / f"{arch}-optimum"))
    if arch == "gpt2":
        for kind, quantization in (("int8", "int8"), ("fp32", "float32")):
            folder = WORK / f"{arch}-ct2-{kind}"
            table[f"ct2-{kind}"] = (
                peers,
                lambda f=folder, q=quantization: ct2_folder(checkpoint, f, q),
            )
        gguf = WORK / f"{arch}-gguf"
        for kind in ("q8_0", "q4_0"):
            table[f"llamacpp-{kind}"] = (peers, lambda k=kind: gguf_file(checkpoint, gguf, k))
    return table


def workloads_of(system: str) -> tuple[str, ...]:
    # llama-cpp-python has no batch API: W3 would be W3 one prompt at a time.
    names = tuple(w for w in WORKLOAD_NAMES if not (system.startswith("llamacpp") and w == "w3"))
    scaling = SCALING if system in SCALED_SYSTEMS else ()
    return names + scaling + (("flat",) if system == "ortgen-int8" else ())


def prepare(arch: str, wanted: set[str] | None = None) -> dict[str, dict]:
    """system → {python, path, workloads}, building only the wanted systems' artefacts."""
    from bench.checkpoints import build

    if not (PEERS / "python").exists():
        raise SystemExit("the peers' environment is missing: run `make bench-setup` first")
    checkpoint = build(WORK / f"{arch}-random", arch)
    systems = {}
    for name, (python, make) in builders(arch, checkpoint).items():
        if wanted is None or name in wanted:
            systems[name] = dict(python=python, path=make(), workloads=workloads_of(name))
    systems[PROBE] = dict(python=Path(sys.executable), path=Path("-"), workloads=("bw",))
    return systems
