"""A loaded model folder: its manifest and an ONNX Runtime session on one of its graphs — the
portable `model.onnx` (optimum's interface), the in-place KV graph, or that graph's native variant
(ortgen's own kernels: int8 matmul, attention over an int8 or float16 cache) when the export wrote
them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortgen import kernels
from ortgen.errors import ModelFolderError
from ortgen.manifest import Manifest, read_manifest
from ortgen.session import create_session

# model.onnx (growing past) / manifest.inplace's file (shared KV buffers) / its native_file (the
# same on ortgen's kernels, ortgen.kernels)
GRAPHS = ("portable", "inplace", "native")


@dataclass(frozen=True)
class Model:
    """What a decode state needs to drive a graph."""

    manifest: Manifest  # shapes, names, precision
    session: Any  # onnxruntime.InferenceSession
    graph: str  # one of GRAPHS
    folder: Path  # where it was loaded from

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        graph: str | None = None,
        spin: bool | int = True,
        huge_pages: bool = True,
    ) -> Model:
        """The folder's fastest graph that runs here (native, then in-place, then portable), or
        the one `graph` names. `spin`: whether (True), not (False) or for how many µs idle ONNX
        Runtime threads busy-wait (see session.session_options). `huge_pages`: the native graph
        reads its weights from this process's own huge pages (weights.py: decode steps ~20 %
        faster), not from the file's pages in the page cache, which processes loading the same
        folder share."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        graph = graph or fastest_graph(manifest, device)
        name, library = _graph_file(folder, manifest, graph, device)
        session = create_session(
            folder / name,
            device,
            threads,
            manifest.min_onnxruntime,
            spin=spin,
            custom_ops=library,
            huge_pages=huge_pages and graph == "native",  # its kernels read weights as stored
        )
        return cls(manifest, session, graph, folder)

    @property
    def kv_dtype(self) -> str:
        """numpy dtype name of this graph's KV cache tensors (the native graph's: "int8" records,
        or "float16" in folders exported before those)."""
        if self.graph == "native":
            return self.manifest.inplace.get("native_kv_dtype", self.manifest.kv_dtype)
        return self.manifest.kv_dtype

    @property
    def kv_record(self) -> int:
        """Last dim of this graph's cache tensors: the head size, or (int8 caches) its codes
        followed by their 4-byte float scale."""
        return self.manifest.head_dim + (kernels.KV_SCALE_BYTES if self.kv_dtype == "int8" else 0)

    @property
    def kv_positions_first(self) -> bool:
        """Whether this graph's cache tensors are [B, L, H, D] (the native graph's, from the
        exports of 2026-12-04, whose manifests say so) rather than [B, H, L, D]."""
        return self.graph == "native" and self.manifest.inplace.get("native_kv_layout") == "BLHD"

    @property
    def slots(self) -> bool:
        """Whether the graph keeps its KV cache in preallocated buffers (in-place and native)."""
        return self.graph != "portable"

    @property
    def pad_id(self) -> int:
        """Filler for left-padded rows; any id works, pads are masked out."""
        eos = self.manifest.eos_token_id
        return eos if eos is not None else 0


_FILES = {"inplace": "file", "native": "native_file"}  # manifest.inplace key of each graph's file


def _graph_file(folder: Path, manifest: Manifest, graph: str, device: str) -> tuple:
    """→ (the graph's file in the folder, the custom-op library it needs or None), once the
    folder is known to hold it and it can run here."""
    if graph not in GRAPHS:
        raise ModelFolderError(f"unknown graph {graph!r}: choose one of {', '.join(GRAPHS)}")
    if graph == "portable":
        return manifest.model_file, None
    if not manifest.inplace:
        raise ModelFolderError(
            f"{folder} has no in-place KV graph (an older ortgen exported it): "
            'export it again with `ortgen export`, or pass graph="portable"'
        )
    if graph == "native" and not manifest.inplace.get("native_file"):
        raise ModelFolderError(
            f"{folder} has no native graph (int8 and int4 folders exported where ortgen's kernels "
            'run have one): export it again on such a machine, or pass graph="inplace"'
        )
    library = kernels.library() if graph == "native" else None
    if graph == "native" and (device != "cpu" or not library):
        raise ModelFolderError(
            'the native graph runs on CPU only: pass device="cpu", or graph="portable"'
            if device != "cpu"
            else kernels.missing()
        )
    _check_weights(folder / manifest.model_file, manifest.inplace.get("weights"))
    return manifest.inplace[_FILES[graph]], library


def fastest_graph(manifest: Manifest, device: str) -> str:
    """The graph Model.load picks by default: native where the folder has it and ortgen's kernels
    run here (CPU), else in-place where the folder has it, else portable."""
    if manifest.inplace.get("native_file") and device == "cpu" and kernels.library():
        return "native"
    return "inplace" if manifest.inplace else "portable"


def weights_fingerprint(path: Path) -> str:
    """Size and a digest of 16 spread 64 KiB samples of the file the in-place graph reads."""
    size = path.stat().st_size
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as stream:
        for k in range(16):
            stream.seek(size * k // 16)
            digest.update(stream.read(1 << 16))
    return f"{size}:{digest.hexdigest()}"


def _check_weights(path: Path, expected: str | None) -> None:
    """The in-place graph reads its weights by byte offset inside `path`: a replaced file would
    load and compute garbage, so it must be the one the export wrote."""
    if not path.is_file():
        raise ModelFolderError(f"{path} is missing: re-export the model folder")
    if expected and weights_fingerprint(path) != expected:
        raise ModelFolderError(
            f"{path} is not the file this folder was exported with (ortgen.json's in-place graph "
            "reads its weights from it): re-export the model folder with `ortgen export`"
        )
