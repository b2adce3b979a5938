"""`template=chat`: prompts rendered by the tokenizer's own chat template (`apply_chat_template`).

The messages are an optional system turn, the record's `history` as earlier user / assistant turns, and the user
turn `instruction + "\\n" + input`. The source is that conversation with the template's generation prompt; the
target is the answer followed by what the template writes after an assistant message, up to and including the
end-of-turn token (the tokenizer's eos: `<|im_end|>` for Qwen, `<|eot_id|>` for Llama 3, `</s>` for Mistral).
What a template puts between the generation prompt and the answer (Mistral's space) goes to the source, so the
labels start exactly at the answer's first token.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from text2sql.errors import ConfigError

_PROBE = "SELECT 1 FROM probe_table"  # an answer no template rewrites (no leading/trailing space to trim)


def messages(instruction: str, input_text: str, system_prompt: str | None, history=()) -> list[dict]:
    """The conversation of one record: [system], (user, assistant) per history turn, then the user's prompt."""
    out = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []
    for turn in history or ():
        query, answer = (turn["input"], turn["output"]) if isinstance(turn, dict) else turn
        out += [{"role": "user", "content": str(query)}, {"role": "assistant", "content": str(answer)}]
    return out + [{"role": "user", "content": f"{instruction}\n{input_text}"}]


def _render(tokenizer: Any, conversation: list[dict], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=generation_prompt)


def check_chat_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"template=chat needs a tokenizer with a chat template, and {type(tokenizer).__name__} "
                          f"({getattr(tokenizer, 'name_or_path', '?')}) has none; set model.template=llama2 or vanilla")


@lru_cache(maxsize=16)
def _answer_frame(tokenizer: Any) -> tuple[str, str]:
    """(head, tail): what the template writes between its generation prompt and the answer, and after the answer
    up to the end of the end-of-turn token (the tail is empty when the template writes no eos)."""
    check_chat_template(tokenizer)
    user = [{"role": "user", "content": "probe"}]
    prompt = _render(tokenizer, user, True)
    full = _render(tokenizer, [*user, {"role": "assistant", "content": _PROBE}], False)
    at = full.find(_PROBE, len(prompt))
    if not full.startswith(prompt) or at < 0:
        raise ConfigError(f"template=chat: the chat template of {getattr(tokenizer, 'name_or_path', '?')} does not "
                          "continue its generation prompt with the answer; set model.template to a named template")
    head, tail = full[len(prompt):at], full[at + len(_PROBE):]
    eos = tokenizer.eos_token or ""
    return head, tail[: tail.index(eos) + len(eos)] if eos and eos in tail else ""


def source_text(tokenizer: Any, instruction: str, input_text: str, system_prompt: str | None, history=()) -> str:
    """The prompt as text: the whole conversation up to the first character of the answer."""
    head, _ = _answer_frame(tokenizer)
    return _render(tokenizer, messages(instruction, input_text, system_prompt, history), True) + head


def target_tail(tokenizer: Any) -> str:
    """The text after the answer that the labels end with ('' when the template writes no eos: the eos id is added)."""
    return _answer_frame(tokenizer)[1]
