"""Rollouts: `num_generations` samples per training prompt through the evaluator's seeded per-row sampler
(`text2sql.eval.candidates.sample_rows`), so a prompt's samples depend on (seed, prompt, sample number) only: the
same under any batch size, batch composition or rank count, and after a resume."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from text2sql.eval.candidates import sample_rows
from text2sql.config.decoding import Decoding
from text2sql.eval.generate import eval_mode, extract_sql, left_pad


@dataclass
class Rollouts:
    """Row k * n + j is sample j of prompt k."""

    completions: list[list[int]]  # each row's generated token ids, up to and including its first EOS
    texts: list[str]              # decoded completions
    sqls: list[str]               # the SQL extracted from each

    def truncated(self, max_new_tokens: int, eos_id: int) -> list[bool]:
        return [len(c) >= max_new_tokens and (not c or c[-1] != eos_id) for c in self.completions]


def _cut_at_eos(row: torch.Tensor, eos_id: int) -> list[int]:
    ids = row.tolist()
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


@torch.no_grad()
def sample_groups(model, tokenizer, sources: Sequence[Sequence[int]], num_generations: int, *, temperature: float,
                  top_p: float, seed: int, max_new_tokens: int, batch_size: int = 16,
                  synced_gpus: bool = False) -> Rollouts:
    """`num_generations` samples per source (token id lists), in source order; about `batch_size` rows a call.
    The model generates in eval mode (no dropout) and is put back in its mode after."""
    decoding = Decoding(strategy="sample", num_samples=num_generations, temperature=temperature, top_p=top_p,
                        seed=seed)
    n = num_generations
    per_call = max(1, batch_size // n)
    device = next(p for p in model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
    rows: list[list[int] | None] = [None] * (len(sources) * n)
    with eval_mode(model):
        for start in range(0, len(order), per_call):
            idx = order[start: start + per_call]
            input_ids, attention = left_pad([sources[i] for i in idx], tokenizer.pad_token_id)
            new_tokens, _ = sample_rows(model, tokenizer, input_ids.to(device), attention.to(device),
                                        [sources[i] for i in idx], n, decoding, max_new_tokens, synced_gpus)
            new_tokens = new_tokens.cpu()
            for k, i in enumerate(idx):
                for j in range(n):
                    rows[i * n + j] = _cut_at_eos(new_tokens[k * n + j], tokenizer.eos_token_id)
    completions = [r or [] for r in rows]
    texts = [tokenizer.decode(c, skip_special_tokens=True) for c in completions]
    return Rollouts(completions, texts, [extract_sql(t) for t in texts])
