"""Prompt files for batch generation: a prompt per line, or JSONL objects with a "prompt" field."""

from __future__ import annotations

import json
from pathlib import Path

from ortgen.errors import InvalidOptionError


def read_prompts(path: Path) -> list[str]:
    """Plain lines, or JSONL objects with a "prompt" field (detected per line); blanks skipped."""
    try:
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except OSError as err:
        raise InvalidOptionError(f"cannot read --prompts-file {path}: {err.strerror}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.lstrip().startswith("{"):
            prompts.append(line)
            continue
        try:
            prompts.append(str(json.loads(line)["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InvalidOptionError(
                f'{path}:{number}: a JSON line needs a "prompt" field, e.g. {{"prompt": "Hi"}}'
            ) from None
    if not prompts:
        raise InvalidOptionError(f"--prompts-file {path} holds no prompts")
    return prompts
