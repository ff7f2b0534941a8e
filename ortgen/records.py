"""Batch-job records: reading prompt records (JSONL or plain lines, a file or a folder) and writing
results as JSONL shards that are complete or absent (temp name, fsync, rename)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from ortgen.errors import InputError

SHARDS = "shard-*.jsonl"  # finished shards; in-progress ones are hidden `.shard-*.tmp` files
RESERVED = ("id", "prompt")  # record keys that are not generation options


def record_seed(record_id: str, run_seed: int) -> int:
    """The seed of a record that gives none: the first 63 bits of blake2b(id) xor the run seed
    (stable across processes and machines, unlike Python's hash)."""
    digest = hashlib.blake2b(record_id.encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 1) ^ run_seed


def read_records(source: Path) -> list[dict]:
    """Every record of a file or folder: {"id", "prompt", "options"}, or {"id", "error"} for a
    line that cannot be a record (bad UTF-8 or JSON, no prompt string, an id given twice)."""
    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and not p.name.startswith("."))
        names = [p.relative_to(source).as_posix() for p in files]
    elif source.is_file():
        files, names = [source], [source.name]
    else:
        raise InputError(f"INPUT {source} does not exist: give a JSONL file or a folder of them")
    records, first_seen = [], {}
    for path, name in zip(files, names, strict=True):
        for number, raw in enumerate(path.read_bytes().splitlines(), 1):
            if raw.strip():
                where = f"{name}:{number}"
                records.append(_unique(_parse_line(raw, where), where, first_seen))
    return records


def _parse_line(raw: bytes, where: str) -> dict:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return {"id": where, "error": f"not valid UTF-8 at byte {err.start}: save it as UTF-8"}
    if not line.lstrip().startswith("{"):
        return {"id": where, "prompt": line, "options": {}}
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return {"id": where, "error": f"not valid JSON ({err.msg}): fix the line"}
    if not isinstance(record, dict):
        return {"id": where, "error": "a JSON line must be an object with a prompt"}
    given = record.get("id", where)
    record_id = str(given) if isinstance(given, str | int) and given != "" else where
    if not isinstance(record.get("prompt"), str):
        got = json.dumps(record["prompt"]) if "prompt" in record else "no such field"
        return {"id": record_id, "error": f'a record needs a "prompt" string (got {got})'}
    options = {k: v for k, v in record.items() if k not in RESERVED}
    return {"id": record_id, "prompt": record["prompt"], "options": options}


def _unique(record: dict, where: str, first_seen: dict[str, str]) -> dict:
    """A record whose id was seen before becomes an error under its line's id (unique)."""
    if record["id"] not in first_seen:
        first_seen[record["id"]] = where
        return record
    own = where if where not in first_seen else f"{where}#duplicate"
    first_seen[own] = where
    return {
        "id": own,
        "error": f"duplicate id {record['id']!r} (first at {first_seen[record['id']]}): "
        "give every record its own id",
    }


def written_ids(output: Path) -> set[str]:
    """Ids of the records in OUTPUT's finished shards; leftovers of killed runs are removed."""
    output = Path(output)
    for stale in output.glob(".shard-*.tmp"):
        stale.unlink(missing_ok=True)
    return {json.loads(line)["id"] for p in output.glob(SHARDS) for line in lines_of(p)}


def lines_of(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


class ShardWriter:
    """Writes each group of results as a new shard: to a hidden temp name, fsynced, renamed."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.output.mkdir(parents=True, exist_ok=True)
        self._run = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self._count = 0

    def write(self, lines: list[str]) -> Path:
        name = f"shard-{self._run}-{self._count:06d}.jsonl"
        self._count += 1
        temp, final = self.output / f".{name}.tmp", self.output / name
        with open(temp, "w", encoding="utf-8") as file:
            file.write("".join(line + "\n" for line in lines))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, final)
        return final
