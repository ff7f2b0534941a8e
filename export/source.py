"""Where a checkpoint comes from: a local Hugging Face folder or a hub id (downloaded once into the
hub cache, read from it offline). Loads the config, model (fp32 whatever the stored dtype; sharded
or not; safetensors or pytorch_model.bin) and tokenizer (tokenizer.json, or vocab.json +
merges.txt converted to one) for the export."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortgen.errors import ExportError, first_line

# Files an export needs from a hub repository: weights, configs, tokenizer.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
_TRUE = ("1", "on", "yes", "true")


@dataclass
class Checkpoint:
    """A loaded source checkpoint."""

    source: str  # what the user named
    path: Path  # local folder holding it
    config: Any  # transformers PretrainedConfig
    model: Any  # transformers PreTrainedModel, fp32, eval mode, eager attention
    tokenizer: Any  # transformers PreTrainedTokenizerFast (has tokenizer.json)


def locate(source: str) -> Path:
    """A local checkpoint folder for `source`, downloading hub ids."""
    path = Path(source).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ExportError(
                f"{source} is not a Hugging Face checkpoint folder (no config.json): pass a folder "
                "written by save_pretrained or a hub id such as gpt2"
            )
        return path
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise ExportError(f"checkpoint folder {source} does not exist: check the path")
    return _download(source)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE or constants.HF_HUB_OFFLINE


def _download(repo_id: str) -> Path:
    """The snapshot folder of `repo_id`: from the hub, or from the local hub cache when offline
    or when the hub cannot be reached (snapshot_download falls back to the cache itself)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    offline = hub_offline()
    try:
        return Path(
            snapshot_download(
                repo_id,
                allow_patterns=_HUB_PATTERNS if offline else _hub_patterns(repo_id),
                local_files_only=offline,
            )
        )
    except RepositoryNotFoundError:
        raise ExportError(
            f"{repo_id!r} is neither a local folder nor a Hugging Face hub repository: "
            "check the name"
        ) from None
    except LocalEntryNotFoundError:
        if offline:
            raise ExportError(
                f"HF_HUB_OFFLINE is set and {repo_id!r} is not in the local Hugging Face cache: "
                "download it once online, or pass a local checkpoint folder"
            ) from None
        raise ExportError(
            f"cannot reach the Hugging Face hub and {repo_id!r} is not in the local hub cache: "
            "check the network, or pass a local checkpoint folder"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ExportError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({first_line(err)}): "
            "check the name and the network, or pass a local checkpoint folder"
        ) from None


def _hub_patterns(repo_id: str) -> list[str]:
    """Download patterns: pytorch_model*.bin only where the repository has no safetensors (most
    hold both, and the .bin would double the download)."""
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(repo_id)
    except Exception:  # offline, unknown repo, …: snapshot_download reports it
        return _HUB_PATTERNS
    if any(name.endswith(".safetensors") for name in files):
        return [pattern for pattern in _HUB_PATTERNS if pattern != "*.bin"]
    return _HUB_PATTERNS


def load_config(path: Path, source: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise ExportError(f"cannot read the config of {source}: {err}") from None


def load_checkpoint(source: str, path: Path, config: Any) -> Checkpoint:
    """Model and tokenizer, as the parity reference will run them (fp32, eager attention)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, config=config, dtype=torch.float32, attn_implementation="eager"
        )
        tokenizer = AutoTokenizer.from_pretrained(path, use_fast=True)
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot load {source}: {first_line(err)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ExportError(f"{source} has no fast tokenizer: add a tokenizer.json to the folder")
    return Checkpoint(source, path, config, model.eval(), tokenizer)
