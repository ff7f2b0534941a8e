"""Prompts from the command line: the PROMPT argument, stdin, or a prompts file (a prompt per line,
or JSONL objects with a "prompt" string), decoded strictly as UTF-8 and validated whole before any
generation, each error naming where the bad prompt came from (argument, stdin, file:line)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from ortgen.errors import InputError, OrtgenError

_FIX = "save it as UTF-8"


def decode(data: bytes, source: str) -> str:
    """`data` as UTF-8 text; anything else is an error naming `source`."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(
            f"{source} is not valid UTF-8 (byte 0x{data[err.start]:02x} at offset {err.start}): "
            f"{_FIX}"
        ) from None


def from_argument(text: str) -> str:
    """The PROMPT argument: bytes that are not UTF-8 reach Python as lone surrogates."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return decode(text.encode("utf-8", "surrogateescape"), "the PROMPT argument")
    return text


def from_stdin() -> str:
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stream (embedding applications): already decoded
        return sys.stdin.read()
    return decode(stream.read(), "the prompt read from stdin")


def read_prompts(path: Path) -> list[str]:
    """Plain lines, or JSONL objects with a "prompt" string (detected per line); blanks skipped."""
    return [text for _, text in read_numbered_prompts(path)]


def read_numbered_prompts(path: Path) -> list[tuple[int, str]]:
    """(line number, prompt) for every prompt in the file, all of it checked before returning."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise InputError(f"cannot read --prompts-file {path}: {err.strerror}") from None
    prompts = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = decode(raw, f"{path}:{number}")
        if line.strip():
            prompts.append((number, _prompt_of(line, f"{path}:{number}")))
    if not prompts:
        raise InputError(f"--prompts-file {path} holds no prompts")
    return prompts


def _prompt_of(line: str, where: str) -> str:
    if not line.lstrip().startswith("{"):
        return line
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where}: not valid JSON ({err.msg}): fix the line") from None
    prompt = record.get("prompt") if isinstance(record, dict) else None
    if not isinstance(prompt, str):
        got = "no such field" if "prompt" not in record else json.dumps(prompt)
        raise InputError(
            f'{where}: a JSON line needs a "prompt" string, e.g. {{"prompt": "Hi"}} (got {got})'
        )
    return prompt


def check_prompts(
    prompts: list[tuple[int, str]], path: Path, check: Callable[[str], object]
) -> None:
    """Run `check` (encode and fit into the context) on every prompt before generating any, so
    a bad line fails the whole file at once, named by its line."""
    for number, text in prompts:
        try:
            check(text)
        except OrtgenError as err:
            raise type(err)(f"{path}:{number}: {err}") from None
