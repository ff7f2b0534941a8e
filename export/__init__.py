"""ortgen's export stage (import name `ortgen_export`): Hugging Face checkpoint → proven ONNX model
folder. Needs the `export` extra (torch, transformers, optimum-onnx, onnx, onnxruntime)."""

from ortgen_export.pipeline import STAGES, ExportOptions, export_model

__all__ = ["STAGES", "ExportOptions", "export_model"]
