"""Text ↔ ids with the folder's `tokenizer.json` (the `tokenizers` library, no transformers), and an
incremental detokenizer that never emits half a UTF-8 character."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer

from ortgen.errors import ModelFolderError, first_line
from ortgen.folder import check_tokenizer_vocabulary

_REPLACEMENT = "\ufffd"  # what byte-level BPE decodes an incomplete UTF-8 sequence to


class Tokenizer:
    """Encode prompts and decode generated ids; special tokens are dropped from decoded text."""

    def __init__(self, backend: _HFTokenizer) -> None:
        self._backend = backend

    @classmethod
    def from_dir(cls, folder: Path) -> Tokenizer:
        path = Path(folder) / "tokenizer.json"
        if not path.is_file():
            raise ModelFolderError(f"{folder} has no tokenizer.json: re-export the model folder")
        try:
            backend = _HFTokenizer.from_file(str(path))
        except Exception as err:  # tokenizers raises a bare Exception for any unreadable file
            raise ModelFolderError(
                f"{path} is not a readable tokenizer ({first_line(err)}): "
                "re-export the model folder"
            ) from None
        check_tokenizer_vocabulary(backend.get_vocab_size(with_added_tokens=True), folder)
        return cls(backend)

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=True)


class TextStream:
    """Turns a growing list of ids into text pieces that join to `decode(all ids)`.

    Decodes a short window (from the last clean character boundary) instead of the whole sequence,
    and holds a piece back while it ends in an incomplete UTF-8 character.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # window start: a clean character boundary
        self._read = 0  # ids up to here have been emitted as text
        self._before = ""  # decode(ids[prefix:read]), kept so each push decodes once
        self._emitted: list[str] = []

    def push(self, token_id: int) -> str:
        """Add one id; return the newly decided text (possibly empty)."""
        self._ids.append(token_id)
        window = self._tokenizer.decode(self._ids[self._prefix :])
        if len(window) <= len(self._before) or window.endswith(_REPLACEMENT):
            return ""
        piece = window[len(self._before) :]
        # The new window starts where this piece starts, at a clean character boundary.
        self._prefix, self._read, self._before = self._read, len(self._ids), piece
        self._emitted.append(piece)
        return piece

    def finish(self) -> str:
        """The text not yet emitted, so that all pieces join to the full decode."""
        full = self._tokenizer.decode(self._ids)
        done = "".join(self._emitted)
        rest = full[len(done) :] if full.startswith(done) else ""
        self._emitted.append(rest)
        return rest
