"""The one error hierarchy of ortgen: every user-facing failure is one of these, and its message
says what went wrong and what to do next (the CLI prints it as a single line)."""

from __future__ import annotations


class OrtgenError(Exception):
    """Base class: a failure the user can act on."""


class ModelFolderError(OrtgenError):
    """The model folder is missing, incomplete, or not written by `ortgen export`."""


class UnsupportedModelError(OrtgenError):
    """The checkpoint's architecture is not one ortgen can export."""


class InvalidOptionError(OrtgenError, ValueError):
    """A generation or export option has a value outside its allowed range."""


class ContextLengthError(OrtgenError):
    """The prompt plus the tokens to generate do not fit in the model's context."""


class DeviceError(OrtgenError):
    """The requested execution provider (e.g. CUDA) is not available."""


class ExportError(OrtgenError):
    """The export stage failed: missing extra, unreadable source, or failed parity."""


class ParityError(ExportError):
    """The exported model does not match transformers within tolerance."""


class InputError(OrtgenError):
    """A prompt or prompts file cannot be used as given (bad bytes, wrong JSON types)."""


class OverloadedError(OrtgenError):
    """The serving engine's queue is full (or it is shutting down): retry later (HTTP 429)."""


class EngineClosedError(OverloadedError):
    """The serving engine is shutting down and takes no new requests (HTTP 503)."""


class RequestTimeoutError(OrtgenError):
    """A request took longer than the engine's per-request timeout (HTTP 504)."""


class RequestCancelledError(OrtgenError):
    """A request was cancelled before it finished (its caller stopped waiting)."""


class OrtgenWarning(UserWarning):
    """Something the user asked for was adjusted or ignored (the CLI shows it once on stderr)."""


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message, or its type name when it has none
    (third-party errors often carry multi-line messages or none at all)."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__
