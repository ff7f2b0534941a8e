"""A loaded model folder: its manifest and an ONNX Runtime session on one of its graphs — the
portable `model.onnx` (optimum's interface) or, when the export wrote one, the in-place KV graph."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortgen.errors import ModelFolderError
from ortgen.manifest import Manifest, read_manifest
from ortgen.session import create_session

GRAPHS = ("portable", "inplace")  # model.onnx (growing past) / manifest.inplace (shared buffers)


@dataclass(frozen=True)
class Model:
    """What a decode state needs to drive a graph."""

    manifest: Manifest  # shapes, names, precision
    session: Any  # onnxruntime.InferenceSession
    graph: str  # "portable" or "inplace"
    folder: Path  # where it was loaded from

    @classmethod
    def load(
        cls,
        folder: str | Path,
        device: str = "cpu",
        threads: int | None = None,
        graph: str | None = None,
        spin: bool = True,
    ) -> Model:
        """The folder's fastest graph (in-place KV when it has one), or the one `graph` names.
        `spin`: let idle ONNX Runtime threads busy-wait (see session.session_options)."""
        folder = Path(folder)
        manifest = read_manifest(folder)
        if graph is None:
            graph = "inplace" if manifest.inplace else "portable"
        if graph not in GRAPHS:
            raise ModelFolderError(f"unknown graph {graph!r}: choose one of {', '.join(GRAPHS)}")
        if graph == "inplace" and not manifest.inplace:
            raise ModelFolderError(f"{folder} has no in-place KV graph: re-export it")
        name = manifest.inplace["file"] if graph == "inplace" else manifest.model_file
        if graph == "inplace":
            _check_weights(folder / manifest.model_file, manifest.inplace.get("weights"))
        session = create_session(
            folder / name, device, threads, manifest.min_onnxruntime, spin=spin
        )
        return cls(manifest, session, graph, folder)

    @property
    def pad_id(self) -> int:
        """Filler for left-padded rows; any id works, pads are masked out."""
        eos = self.manifest.eos_token_id
        return eos if eos is not None else 0


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
