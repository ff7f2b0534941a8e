"""Training text that every machine has offline: the documentation that ships with Python — the
language reference topics behind `help()` (pydoc_data) and the docstrings of the standard library.
PSF licence. Deterministic for a given Python version; every 20th document is held out."""

from __future__ import annotations

import ast
import sysconfig
from pathlib import Path

HELD_OUT_EVERY = 20  # document i is held out when i % HELD_OUT_EVERY == 0
_SKIP = ("test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__")


def documents() -> list[str]:
    """pydoc topics, then stdlib docstrings of at least 200 characters, in a fixed order."""
    from pydoc_data.topics import topics

    docs = [topics[name].strip() for name in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        if any(part in _SKIP for part in path.relative_to(stdlib).parts):
            continue
        docs += _docstrings(path)
    return [d for d in docs if d]


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    nodes = [tree] + [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
    ]
    found = (ast.get_docstring(n) for n in nodes)
    return [d.strip() for d in found if d and len(d) >= 200]


def split() -> tuple[str, str]:
    """(training text, held-out text), documents separated by blank lines."""
    docs = documents()
    train = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY]
    held = [d for i, d in enumerate(docs) if not i % HELD_OUT_EVERY]
    return "\n\n".join(train), "\n\n".join(held)
