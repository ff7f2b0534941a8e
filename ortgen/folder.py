"""Reads and validates a model folder's files: every file the runtime reads is checked when it is
loaded, and a problem becomes one line naming the file and the fix (never a Python or ONNX
Runtime internal error later)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ortgen.errors import ModelFolderError

MANIFEST_NAME = "ortgen.json"
_REEXPORT = "re-export the model folder with `ortgen export`"
# Annotation names (as written in the dataclasses) → the JSON types that may carry them.
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "None": (type(None),),
    "dict": (dict,),
    "list": (list,),
    "tuple": (list,),
    "TensorNames": (dict,),
}


def require_folder(path: Path) -> Path:
    """`path` as a model folder; a file inside one (`-m DIR/model.onnx`) is a clear mistake."""
    path = Path(path)
    if path.is_file():
        raise ModelFolderError(
            f"{path} is a file: pass the folder that holds it ({path.parent}), not a file in it"
        )
    if not path.is_dir():
        raise ModelFolderError(
            f"model folder {path} does not exist: export one with `ortgen export SOURCE {path}`"
        )
    return path


def read_json_object(path: Path, fix: str = _REEXPORT) -> dict[str, Any]:
    """The JSON object in `path`; unreadable bytes, bad JSON or another JSON type is an error."""
    try:
        text = path.read_bytes().decode("utf-8")
        data = json.loads(text)
    except OSError as err:
        raise ModelFolderError(f"cannot read {path} ({err.strerror}): {fix}") from None
    except UnicodeDecodeError:
        raise ModelFolderError(f"{path} is not UTF-8 text (a binary file?): {fix}") from None
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{path} is not valid JSON ({err}): {fix}") from None
    if not isinstance(data, dict):
        raise ModelFolderError(
            f"{path} holds a JSON {_json_type(data)}, not an object ({{...}}): {fix}"
        )
    return data


def check_fields(cls: type, data: dict[str, Any], path: Path) -> None:
    """Each known field of the dataclass `cls` present in `data` has a JSON type its annotation
    allows (`int | None`, `str`, `dict[...]` …); unknown annotations are not checked."""
    for field in dataclasses.fields(cls):
        if field.name not in data or not isinstance(field.type, str):
            continue
        allowed = _allowed_types(field.type)
        value = data[field.name]
        if allowed is None or _is_instance(value, allowed):
            continue
        raise ModelFolderError(
            f"{path}: {field.name!r} must be {field.type}, got {_json_type(value)} "
            f"{json.dumps(value)[:40]}: {_REEXPORT}"
        )


def _allowed_types(annotation: str) -> tuple[type, ...] | None:
    allowed: tuple[type, ...] = ()
    for part in annotation.split("|"):
        types = _JSON_TYPES.get(part.strip().split("[")[0])
        if types is None:
            return None
        allowed += types
    return allowed


def _is_instance(value: Any, allowed: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true is not a number here
        return bool in allowed
    return isinstance(value, allowed)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "list", str: "string"}.get(type(value), "number")


def check_tokenizer_vocabulary(tokenizer_size: int, folder: Path) -> None:
    """The tokenizer must not produce ids the model has no embedding row for."""
    manifest_path = Path(folder) / MANIFEST_NAME
    if not manifest_path.is_file():
        return  # a bare tokenizer folder: nothing to compare with
    vocab_size = read_json_object(manifest_path).get("vocab_size")
    if isinstance(vocab_size, int) and tokenizer_size > vocab_size:
        raise ModelFolderError(
            f"{Path(folder) / 'tokenizer.json'} has {tokenizer_size} ids but the model has "
            f"{vocab_size} (vocab_size in {MANIFEST_NAME}): the tokenizer belongs to another "
            f"model; {_REEXPORT}"
        )


def check_graph_io(manifest: Any, session: Any, path: Path) -> None:
    """The graph's inputs and outputs (read from the session) are the ones the manifest names,
    with its head count, head size and vocabulary size."""
    names = manifest.tensors
    layers = range(manifest.num_layers)
    past = [n.format(i=i) for i in layers for n in (names.past_key, names.past_value)]
    present = [n.format(i=i) for i in layers for n in (names.present_key, names.present_value)]
    # Optional inputs with defaults (logits_to_keep) are overridable initializers, not inputs.
    feeds = [*session.get_inputs(), *session.get_overridable_initializers()]
    inputs = {i.name: i.shape for i in feeds}
    outputs = {o.name: o.shape for o in session.get_outputs()}
    wanted = {names.input_ids, names.attention_mask, names.position_ids, *past}
    if names.logits_to_keep:
        wanted.add(names.logits_to_keep)
    problems = []
    if missing := sorted(wanted - set(inputs)):
        problems.append(f"lacks inputs {_few(missing)}")
    if extra := sorted(set(inputs) - wanted):
        problems.append(f"has unexpected inputs {_few(extra)}")
    if missing := sorted({names.logits, *present} - set(outputs)):
        problems.append(f"lacks outputs {_few(missing)}")
    if not problems:
        problems = _shape_problems(manifest, inputs, outputs, past)
    if problems:
        raise ModelFolderError(
            f"{path} does not match {MANIFEST_NAME} (the graph {'; '.join(problems)}): it comes "
            f"from another export; {_REEXPORT}"
        )


def _shape_problems(manifest: Any, inputs: dict, outputs: dict, past: list[str]) -> list[str]:
    """Static sizes that disagree with the manifest (symbolic sizes are not compared)."""
    problems = []
    expected = {1: manifest.num_heads, 3: manifest.head_dim}  # past: [B, H, P, D]
    for axis, size in expected.items():
        found = {s[axis] for s in (inputs[n] for n in past) if len(s) == 4 and _static(s[axis])}
        if found - {size}:
            problems.append(f"has {sorted(found)} at past axis {axis}, the manifest {size}")
    logits = outputs[manifest.tensors.logits]
    if logits and _static(logits[-1]) and logits[-1] != manifest.vocab_size:
        problems.append(f"has {logits[-1]} logits per token, the manifest {manifest.vocab_size}")
    return problems


def _static(size: Any) -> bool:
    return isinstance(size, int) and size > 0


def _few(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_session(model_path: Path, session: Any) -> None:
    """Check a session on a folder's model file against the folder's manifest (other graphs
    in the folder, with interfaces of their own, are the loader's to check)."""
    from ortgen.manifest import read_manifest

    folder = Path(model_path).parent
    if not (folder / MANIFEST_NAME).is_file():
        return
    manifest = read_manifest(folder)
    if Path(model_path).name == manifest.model_file:
        check_graph_io(manifest, session, Path(model_path))
