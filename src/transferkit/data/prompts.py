"""Prompts of the generative tasks: one formatting and truncation rule for data prep, training and evaluation.

An example is ``(instruction, source, target)``. The user message is the instruction, a blank line and the
source. With a tokenizer that has a chat template the message goes through it (with the generation prompt);
otherwise a plain ``### Response:`` separator ends the prompt. The target is followed by the EOS token so the
model learns to stop.

Truncation at ``max_length`` (prompt + target tokens): the target keeps at most ``max_length`` minus the
smaller of the prompt length and half of ``max_length``; the prompt then loses tokens from its middle (the
source's end), so the instruction at its start and the generation prompt at its end survive.

Encoder-decoder (seq2seq) models read the user message as the encoder input (the tokenizer's own special
tokens, no chat template) and the target in the decoder: each side is cut to ``max_length`` on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PLAIN_SEPARATOR = "\n\n### Response:\n"
# Prompt tokens kept from the end when the middle is cut: the chat template's generation prompt.
PROMPT_TAIL = 16


def user_message(instruction: str | None, source: str) -> str:
    """The instruction, a blank line, the source (the source alone without an instruction)."""
    return f"{instruction.strip()}\n\n{source}" if instruction and instruction.strip() else source


def has_chat_template(tokenizer: Any) -> bool:
    """Whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def prompt_text(tokenizer: Any, instruction: str | None, source: str) -> str:
    """The prompt as text: the chat template's rendering of the user message, or the message and a separator."""
    message = user_message(instruction, source)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": message}], tokenize=False,
                                             add_generation_prompt=True)
    return message + PLAIN_SEPARATOR


def prompt_ids(tokenizer: Any, instruction: str | None, source: str, *, seq2seq: bool = False) -> list[int]:
    """Token ids of the prompt (special tokens from the chat template, else the tokenizer's own prefix).

    ``seq2seq``: the encoder input, the user message with the tokenizer's special tokens.
    """
    if seq2seq:
        return list(tokenizer(user_message(instruction, source))["input_ids"])
    text = prompt_text(tokenizer, instruction, source)
    ids = tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]
    # A tokenizer's own suffix (BERT's [SEP]) would sit between the prompt and the target: drop it.
    if ids and tokenizer.sep_token_id is not None and ids[-1] == tokenizer.sep_token_id:
        ids = ids[:-1]
    return list(ids)


def target_ids(tokenizer: Any, target: str) -> list[int]:
    """Token ids of the target followed by EOS (SEP for tokenizers without EOS)."""
    ids = list(tokenizer(target, add_special_tokens=False)["input_ids"])
    end = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    return ids + ([end] if end is not None else [])


@dataclass(frozen=True)
class Fitted:
    """An example cut to ``max_length``: the token ids and what was cut."""

    prompt: list[int]
    target: list[int]
    prompt_cut: int
    target_cut: int


def cut_prompt(prompt: list[int], budget: int) -> list[int]:
    """Keep the first ``budget - tail`` and the last ``tail`` tokens of the prompt (see the module docstring)."""
    if len(prompt) <= budget:
        return prompt
    tail = min(PROMPT_TAIL, budget // 2)
    return prompt[: budget - tail] + (prompt[-tail:] if tail else [])


def fit(prompt: list[int], target: list[int], max_length: int, *, seq2seq: bool = False) -> Fitted:
    """Cut a tokenized example to ``max_length`` tokens (the rule of the module docstring)."""
    if seq2seq:
        kept_prompt, kept_target = cut_prompt(prompt, max_length), target[:max_length]
        return Fitted(kept_prompt, kept_target, len(prompt) - len(kept_prompt), len(target) - len(kept_target))
    target_budget = max_length - min(len(prompt), max_length // 2)
    kept_target = target[:target_budget]
    kept_prompt = cut_prompt(prompt, max_length - len(kept_target))
    return Fitted(kept_prompt, kept_target, len(prompt) - len(kept_prompt), len(target) - len(kept_target))


def generation_prompt(tokenizer: Any, instruction: str | None, source: str, max_length: int,
                      max_new_tokens: int, *, seq2seq: bool = False) -> list[int]:
    """Prompt ids for generation, cut so that the prompt and ``max_new_tokens`` fit in ``max_length``.

    At least half of ``max_length`` stays for the prompt, as in training; a seq2seq encoder input keeps
    ``max_length`` (the output is generated on the decoder side).
    """
    budget = max_length if seq2seq else max(max_length - max_new_tokens, max_length // 2)
    return cut_prompt(prompt_ids(tokenizer, instruction, source, seq2seq=seq2seq), budget)


def first_sentence(text: str) -> str:
    """The lead baseline: the text up to its first sentence end (``.``, ``!`` or ``?`` followed by a space)."""
    import re

    match = re.search(r"(?<=[.!?])\s", text.strip())
    return text.strip()[: match.start()] if match else text.strip()
