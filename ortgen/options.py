"""Generation options: one frozen dataclass, validated on creation, with defaults taken from the
model folder's `generation_config.json` and then transformers' defaults; explicit options win."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortgen.errors import InvalidOptionError


@dataclass(frozen=True)
class GenerationOptions:
    """How to continue a prompt. Field meanings follow transformers' `generate`."""

    max_new_tokens: int = 20  # tokens to generate at most (transformers' max_length default is 20)
    do_sample: bool = False  # False: greedy argmax; True: sample from the warped distribution
    temperature: float = 1.0  # divides the logits before top-k / top-p (sampling only)
    top_k: int | None = 50  # keep the k best ids when sampling; 0 or None disables
    top_p: float = 1.0  # keep the smallest set reaching this mass when sampling; 1.0 disables
    min_new_tokens: int = 0  # EOS is forbidden until this many tokens exist
    repetition_penalty: float = 1.0  # >1 discourages ids already in prompt or output; 1.0 disables
    no_repeat_ngram_size: int = 0  # forbid repeating any n-gram of this size; 0 disables
    stop: tuple[str, ...] = ()  # stop strings: output ends before the first one
    num_return_sequences: int = 1  # independent samples per prompt (sampling only)
    seed: int | None = None  # RNG seed for sampling; None draws fresh entropy
    eos_token_id: tuple[int, ...] | None = None  # stop ids; None: the model's eos from the manifest
    ignore_eos: bool = False  # keep generating past EOS (benchmarks, parity runs)
    truncate_prompt: str | None = None  # "left": drop the oldest prompt tokens to fit the context

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, int):
            object.__setattr__(self, "eos_token_id", (self.eos_token_id,))
        elif self.eos_token_id is not None:
            object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InvalidOptionError(f"max_new_tokens must be ≥ 1, got {self.max_new_tokens}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise InvalidOptionError(
                f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], "
                f"got {self.min_new_tokens}"
            )
        if not self.repetition_penalty > 0:
            raise InvalidOptionError(
                f"repetition_penalty must be > 0 (1.0 disables it), got {self.repetition_penalty}"
            )
        if self.no_repeat_ngram_size < 0:
            raise InvalidOptionError(
                f"no_repeat_ngram_size must be ≥ 0 (0 disables it), got {self.no_repeat_ngram_size}"
            )
        if self.num_return_sequences < 1:
            raise InvalidOptionError(
                f"num_return_sequences must be ≥ 1, got {self.num_return_sequences}"
            )
        if self.num_return_sequences > 1 and not self.do_sample:
            raise InvalidOptionError(
                "num_return_sequences > 1 needs sampling (do_sample=True / --do-sample): "
                "greedy decoding would return the same sequence each time"
            )
        if self.truncate_prompt not in (None, "left"):
            raise InvalidOptionError(
                f"truncate_prompt must be 'left' or unset, got {self.truncate_prompt!r}"
            )
        if self.do_sample and not self.temperature > 0:
            raise InvalidOptionError(
                f"temperature must be > 0 when sampling, got {self.temperature}; "
                "use greedy decoding (do_sample=False / --greedy) for deterministic output"
            )
        if self.top_k is not None and self.top_k < 0:
            raise InvalidOptionError(f"top_k must be ≥ 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidOptionError(f"top_p must be in (0, 1], got {self.top_p}")

    def with_overrides(self, **overrides: Any) -> GenerationOptions:
        """A copy with every non-None override applied; unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidOptionError(
                f"unknown generation option(s) {unknown}; known options: {sorted(known)}"
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given)


# generation_config.json keys ortgen honours; the rest (num_beams, …) are ignored.
_CONFIG_KEYS = (
    "max_new_tokens",
    "min_new_tokens",
    "do_sample",
    "temperature",
    "top_k",
    "top_p",
    "repetition_penalty",
    "no_repeat_ngram_size",
    "eos_token_id",
)


def defaults_from_folder(folder: Path) -> GenerationOptions:
    """Defaults for a model folder: its generation_config.json over transformers' defaults."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return GenerationOptions()
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InvalidOptionError(f"cannot read {path}: {err}; fix or delete the file") from None
    return GenerationOptions().with_overrides(**{k: config.get(k) for k in _CONFIG_KEYS})
