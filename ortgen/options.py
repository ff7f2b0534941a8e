"""Generation options: one frozen dataclass, validated on creation, with defaults taken from the
model folder's `generation_config.json` and then transformers' defaults; explicit options win."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortgen.errors import InvalidOptionError, ModelFolderError, OrtgenWarning
from ortgen.folder import read_json_object


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
    num_beams: int = 1  # beam search over this many beams when > 1 (greedy, as transformers')
    length_penalty: float = 1.0  # beam search: a hypothesis' score ÷ generated length ** this
    early_stopping: bool | str = False  # beam search: True, False (a heuristic) or "never"
    max_length: int | None = None  # prompt + new tokens at most; max_new_tokens wins over it
    min_length: int = 0  # EOS forbidden until prompt + new tokens reach this (transformers')
    pad_token_id: int | None = None  # accepted for transformers' calls: outputs are never padded

    def __post_init__(self) -> None:
        if isinstance(self.eos_token_id, int):
            object.__setattr__(self, "eos_token_id", (self.eos_token_id,))
        elif self.eos_token_id is not None:
            object.__setattr__(self, "eos_token_id", tuple(int(i) for i in self.eos_token_id))
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        object.__setattr__(self, "stop", tuple(self.stop))
        self._check_numbers()
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
        if self.num_return_sequences > 1 and not self.do_sample and self.num_beams == 1:
            raise InvalidOptionError(
                "num_return_sequences > 1 needs sampling (do_sample=True) or beam search "
                "(num_beams ≥ num_return_sequences): greedy decoding would return the same "
                "sequence each time"
            )
        self._check_beams_and_lengths()
        if self.truncate_prompt not in (None, "left"):
            raise InvalidOptionError(
                f"truncate_prompt must be 'left' or unset, got {self.truncate_prompt!r}"
            )
        if self.do_sample and not self.temperature > 0:
            raise InvalidOptionError(
                f"temperature must be > 0 when sampling, got {self.temperature}; "
                "use greedy decoding (do_sample=False) for deterministic output"
            )
        if self.top_k is not None and self.top_k < 0:
            raise InvalidOptionError(f"top_k must be ≥ 0 (0 disables it), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidOptionError(f"top_p must be in (0, 1], got {self.top_p}")

    def _check_beams_and_lengths(self) -> None:
        """transformers' beam and total-length keywords."""
        if not isinstance(self.num_beams, int) or self.num_beams < 1:
            raise InvalidOptionError(f"num_beams must be ≥ 1 (1: no beams), got {self.num_beams}")
        if self.num_beams > 1 and self.num_return_sequences > self.num_beams:
            raise InvalidOptionError(
                f"num_return_sequences {self.num_return_sequences} exceeds num_beams "
                f"{self.num_beams}: beam search returns at most num_beams sequences"
            )
        if not (isinstance(self.early_stopping, bool) or self.early_stopping == "never"):
            raise InvalidOptionError(
                f"early_stopping must be True, False or 'never', got {self.early_stopping!r}"
            )
        if self.max_length is not None and self.max_length < 1:
            raise InvalidOptionError(f"max_length must be ≥ 1, got {self.max_length}")
        if self.min_length < 0:
            raise InvalidOptionError(f"min_length must be ≥ 0, got {self.min_length}")
        if self.pad_token_id is not None and self.pad_token_id < 0:
            raise InvalidOptionError(f"pad_token_id must be ≥ 0, got {self.pad_token_id}")

    def for_prompt(self, length: int) -> GenerationOptions:
        """These options for a prompt of `length` tokens: transformers' totals (max_length,
        min_length, prompt included) become max_new_tokens / min_new_tokens. Each prompt counts
        its own length (transformers counts a padded batch's width): a row never depends on its
        batch."""
        if self.max_length is None and not self.min_length:
            return self
        new = self.max_new_tokens
        if self.max_length is not None:
            new = self.max_length - length
            if new < 1:
                raise InvalidOptionError(
                    f"max_length {self.max_length} leaves no room after the prompt of {length} "
                    f"tokens: raise max_length above {length} or give max_new_tokens instead"
                )
        least = min(max(self.min_new_tokens, self.min_length - length), new)
        return dataclasses.replace(
            self, max_new_tokens=new, min_new_tokens=least, max_length=None, min_length=0
        )

    def _check_numbers(self) -> None:
        """Values no setting makes meaningful: non-finite floats, negative seeds and ids."""
        for name in ("temperature", "top_p", "repetition_penalty", "length_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidOptionError(
                    f"{name} must be a finite number, got {getattr(self, name)}"
                )
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidOptionError(f"seed must be in [0, 2**63), got {self.seed}")
        for token in self.eos_token_id or ():
            if token < 0:
                raise InvalidOptionError(f"eos_token_id must be ≥ 0, got {token}")

    def check_vocabulary(self, vocab_size: int) -> None:
        """EOS ids must name tokens the model has (an id beyond it never stops anything)."""
        outside = [t for t in self.eos_token_id or () if t >= vocab_size]
        if outside:
            raise InvalidOptionError(
                f"eos_token_id {outside[0]} is outside the model's vocabulary [0, {vocab_size})"
            )

    def ignored_options(self, explicit: dict[str, Any]) -> list[str]:
        """Names in `explicit` (options the caller set) that these options do not use: the
        sampling controls under greedy decoding."""
        unused = [] if self.do_sample else ["temperature", "top_k", "top_p"]
        if self.num_beams == 1:
            unused += ["length_penalty", "early_stopping"]
        return [n for n in unused if explicit.get(n) is not None]

    def with_overrides(self, **overrides: Any) -> GenerationOptions:
        """A copy with every non-None override applied; unknown names are an error."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise InvalidOptionError(
                f"unknown generation option(s) {unknown}; known options: {sorted(known)}"
            )
        given = {k: v for k, v in overrides.items() if v is not None}
        if "max_new_tokens" in given:  # transformers: max_new_tokens wins over max_length
            if "max_length" in given:
                warnings.warn(
                    f"both max_new_tokens={given['max_new_tokens']} and max_length="
                    f"{given['max_length']} given: max_new_tokens wins, as in transformers",
                    OrtgenWarning,
                    stacklevel=2,
                )
            given["max_length"] = None
        limit = given.get("max_new_tokens", self.max_new_tokens)
        if "min_new_tokens" not in given and self.min_new_tokens > limit:
            given["min_new_tokens"] = _capped_min(self.min_new_tokens, limit)
        return dataclasses.replace(self, **given)


def _capped_min(min_new_tokens: int, max_new_tokens: int) -> int:
    """A default min_new_tokens (the model's generation_config.json) above max_new_tokens."""
    warnings.warn(
        f"the model's default min_new_tokens {min_new_tokens} is more than "
        f"max_new_tokens={max_new_tokens}: using min_new_tokens={max_new_tokens}",
        OrtgenWarning,
        stacklevel=3,
    )
    return max_new_tokens


# Options that are ortgen's run-time controls, not transformers' generation_config keys.
RUNTIME_ONLY = ("stop", "seed", "ignore_eos", "truncate_prompt")
# generation_config.json keys ortgen honours, with transformers' meaning: every other field.
_CONFIG_KEYS = tuple(
    f.name for f in dataclasses.fields(GenerationOptions) if f.name not in RUNTIME_ONLY
)


_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "do_sample": (bool,),
    "temperature": (int, float),
    "top_p": (int, float),
    "repetition_penalty": (int, float),
    "eos_token_id": (int, list),
    "length_penalty": (int, float),
    "early_stopping": (bool, str),
}  # the other keys are ints

# generation_config.json keys that change nothing ortgen generates (bookkeeping, output formats,
# the cache, ids only encoder-decoder models use): ignored without a word. Any other key is one
# ortgen does not implement: ignored with one warning naming it.
IGNORED_CONFIG_KEYS = (
    "_from_model_config",
    "transformers_version",
    "bos_token_id",
    "decoder_start_token_id",
    "use_cache",
    "cache_implementation",
    "return_dict_in_generate",
    "output_scores",
    "output_logits",
    "output_attentions",
    "output_hidden_states",
)


def defaults_from_folder(folder: Path) -> GenerationOptions:
    """Defaults for a model folder: its generation_config.json over transformers' defaults. A
    min_new_tokens above max_new_tokens there is capped (with a warning), not an error."""
    path = Path(folder) / "generation_config.json"
    if not path.is_file():
        return GenerationOptions()
    fix = "fix or delete the file"
    config = read_json_object(path, fix)
    unknown = sorted(set(config) - set(_CONFIG_KEYS) - set(IGNORED_CONFIG_KEYS))
    if unknown:
        warnings.warn(
            f"{path}: ortgen does not implement {', '.join(unknown)}; ignored (honoured: "
            f"{', '.join(_CONFIG_KEYS)})",
            OrtgenWarning,
            stacklevel=2,
        )
    for key in _CONFIG_KEYS:
        value = config.get(key)
        allowed = _CONFIG_TYPES.get(key, (int,))
        if value is not None and (
            (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed)
        ):
            raise ModelFolderError(f"{path}: {key!r} has the wrong type ({value!r}): {fix}")
    values = {k: config.get(k) for k in _CONFIG_KEYS}
    if isinstance(values["eos_token_id"], list) and not all(
        isinstance(i, int) for i in values["eos_token_id"]
    ):
        raise ModelFolderError(f"{path}: 'eos_token_id' must be an id or a list of ids: {fix}")
    if isinstance(values["min_new_tokens"], int):
        limit = values["max_new_tokens"] or GenerationOptions.max_new_tokens
        if values["min_new_tokens"] > limit:
            values["min_new_tokens"] = _capped_min(values["min_new_tokens"], limit)
    try:
        return GenerationOptions().with_overrides(**values)
    except InvalidOptionError as err:
        raise ModelFolderError(f"{path}: {err}: {fix}") from None
