"""Byte-level BPE tokenizers learned locally with a chat model's special tokens and chat template, for the CPU
stand-ins of chat models (`model=tiny_qwen`, `model=tiny_llama3`): the real tokenizers' vocabularies are not
available offline, but what a run depends on is: which specials exist, which one ends a turn (eos), which one pads,
whether bos is written by the template, and the chat template itself.

- Qwen2.5 (ChatML): `<|endoftext|>` pads, `<|im_start|>` / `<|im_end|>` frame turns, eos is `<|im_end|>` (the
  end-of-turn token, distinct from the pad), no bos; Qwen2.5's default system turn when none is given.
- Llama 3: `<|begin_of_text|>` is bos and the template writes it, `<|start_header_id|>role<|end_header_id|>`,
  eos is `<|eot_id|>`, no pad and no unk token (so `load_tokenizer` pads with eos, as with the real one).
"""

from __future__ import annotations

from collections.abc import Iterable

QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5's template without its tool-calling branches
CHATML = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\n" + QWEN_SYSTEM + "<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Llama-3-Instruct's template (3.1 adds tool and date headers to the system turn; the turn framing is the same)
LLAMA3 = (
    "{% for message in messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

STYLES = {
    "qwen": {"specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], "template": CHATML,
             "tokens": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}},
    "llama3": {"specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                            "<|eot_id|>"], "template": LLAMA3,
               "tokens": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}},
}


def train_chat_tokenizer(style: str, texts: Iterable[str], vocab_size: int, pre_tokenizer):
    """A `PreTrainedTokenizerFast` of `style` (qwen | llama3): byte-level BPE learned from `texts` under the given
    pre-tokenizer (no unk: every byte is a piece), the style's specials appended after the learned vocab (as the
    real ones sit after theirs), its eos / pad / bos and its chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    spec = STYLES[style]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizer
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size - len(spec["specials"]), 300), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer=trainer)
    bpe.add_special_tokens(spec["specials"])  # after the learned vocab, in the real tokenizer's order
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, **spec["tokens"])
    tokenizer.chat_template = spec["template"]
    return tokenizer
