"""Library messages name options as Python does (`top_p`); the command line speaks in flags
(`--top-p`)."""

from __future__ import annotations

import re

_SPELLINGS = {
    "do_sample=True": "--do-sample",
    "do_sample=False": "--greedy",
    "truncate_prompt='left'": "--truncate-prompt left",
    'truncate_prompt="left"': "--truncate-prompt left",
}
_OPTION_NAMES = (
    "max_new_tokens|min_new_tokens|do_sample|temperature|top_k|top_p|repetition_penalty|"
    "no_repeat_ngram_size|num_return_sequences|seed|eos_token_id|ignore_eos|truncate_prompt|"
    "threads|block_size|accuracy_level|min_agreement|allow_partial|prompt_tokens|new_tokens|"
    "batch_size|pooling"
)
_OPTION = re.compile(rf"(?<![\w./-])({_OPTION_NAMES})(?:=(\S+?))?(?=[\s,;:)]|$)")


def flag_names(message: str) -> str:
    """`top_p must…` → `--top-p must…`, `max_new_tokens=10` → `--max-new-tokens 10`."""
    for python, flag in _SPELLINGS.items():
        message = message.replace(python, flag)

    def flag(match: re.Match) -> str:
        name = "--" + match.group(1).replace("_", "-")
        return f"{name} {match.group(2).strip(chr(39))}" if match.group(2) else name

    return _OPTION.sub(flag, message)
