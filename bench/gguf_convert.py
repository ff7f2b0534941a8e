"""A GPT-2 checkpoint → GGUF q8_0 (llama.cpp's own convert_hf_to_gguf.py) and q4_0
(`llama_model_quantize` from an f16 conversion, as llama.cpp users make it). Runs in bench/.venv:

    bench/.venv/bin/python -m bench.gguf_convert CHECKPOINT OUT_DIR  # → model-q8_0.gguf, -q4_0

The converter is llama.cpp's, vendored in the llama-cpp-python source distribution that
`make bench-setup` unpacks; two of its checks are adapted at run time, the weights never touched.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

LLAMA_CPP = "0.3.36"  # the llama-cpp-python release built by `make bench-setup`
SOURCE = Path(__file__).parent / "work" / f"llama_cpp_python-{LLAMA_CPP}" / "vendor" / "llama.cpp"
DUMMY_MERGE = "Ġ Ġ"  # never applied: the bench feeds token ids, it never tokenizes text


def adapt_converter() -> None:
    """The synthetic tokenizer (bench/checkpoints.py) is byte-level BPE with GPT-2's
    pre-tokenizer but no merges: the converter knows tokenizers by a hash of their output and
    llama.cpp refuses a BPE vocabulary without merges."""
    sys.path[1:1] = [str(SOURCE), str(SOURCE / "gguf-py")]
    import gguf
    from conversion import base

    known = base.TextModel.get_vocab_base_pre

    def pre_tokenizer(self, tokenizer) -> str:
        try:
            return known(self, tokenizer)
        except NotImplementedError:
            return "gpt-2"

    class SpecialVocab(gguf.SpecialVocab):
        def _load(self, path: Path) -> None:
            super()._load(path)
            if self.load_merges and not self.merges:
                self.merges = [DUMMY_MERGE]

    base.TextModel.get_vocab_base_pre = pre_tokenizer
    gguf.SpecialVocab = SpecialVocab


def convert(checkpoint: Path, out: Path, outtype: str) -> None:
    """Run convert_hf_to_gguf.py in this process (so the adaptations apply)."""
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(checkpoint), "--outfile", str(out)]
    sys.argv += ["--outtype", outtype]
    try:
        runpy.run_path(str(SOURCE / "convert_hf_to_gguf.py"), run_name="__main__")
    finally:
        sys.argv = argv


def quantize(source: Path, out: Path, ftype: str) -> None:
    """llama.cpp's own quantizer with its default recipe for `ftype` (e.g. "Q4_0")."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 2
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if status != 0:
        raise SystemExit(f"llama_model_quantize {source} → {out} failed ({status})")


def main(checkpoint: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    adapt_converter()
    staged = folder / "staging.gguf"  # renamed when complete: a half-written file is never reused
    if not (folder / "model-q8_0.gguf").is_file():
        convert(checkpoint, staged, "q8_0")
        staged.rename(folder / "model-q8_0.gguf")
    if not (folder / "model-q4_0.gguf").is_file():
        f16 = folder / "model-f16.gguf"
        if not f16.is_file():
            convert(checkpoint, staged, "f16")
            staged.rename(f16)
        quantize(f16, staged, "Q4_0")
        staged.rename(folder / "model-q4_0.gguf")
        f16.unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
