"""Where a checkpoint comes from: a local Hugging Face folder or a hub id (downloaded once into the
hub cache). Loads the config, model and tokenizer for the export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortgen.errors import ExportError, first_line

# Files an export needs from a hub repository: weights, configs, tokenizer.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]


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


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS))
    except RepositoryNotFoundError:
        raise ExportError(
            f"{repo_id!r} is neither a local folder nor a Hugging Face hub repository: "
            "check the name"
        ) from None
    except LocalEntryNotFoundError:
        raise ExportError(
            f"cannot reach the Hugging Face hub and {repo_id!r} is not in the local hub cache: "
            "check the network, or pass a local checkpoint folder"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise ExportError(
            f"cannot fetch {repo_id!r} from the Hugging Face hub ({first_line(err)}): "
            "check the name and the network, or pass a local checkpoint folder"
        ) from None


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
