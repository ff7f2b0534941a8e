"""ortgen runtime: generate text from an exported GPT-2 / GPT-Neo model folder with ONNX Runtime.
Imports numpy, onnxruntime and tokenizers only — never torch or transformers."""

from ortgen.errors import OrtgenError
from ortgen.generator import Generator
from ortgen.manifest import Manifest, read_manifest
from ortgen.options import GenerationOptions

__all__ = ["Generator", "GenerationOptions", "Manifest", "OrtgenError", "read_manifest"]
__version__ = "0.1.0"
