"""Candidate SQL from the model: greedy (the exact `generate_sql` path), beam search, or per-example seeded sampling.

Sampling does not use `generate(do_sample=True)`: its draws come from one global random stream shared by the
whole batch, so an example's samples would change with the batch it lands in (batch size, ranks, failing
subsets). :class:`RowSampler` draws each row's tokens from that row's own pre-drawn uniforms instead (inverse CDF
of the temperature / top-p distribution) and hands generate a one-hot choice, decoded greedily.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from text2sql.config.decoding import Decoding
from text2sql.eval.decoding import Candidate, Prediction, Timings, decode, executor
from text2sql.errors import UserError
from text2sql.eval.generate import eval_mode, extract_sql, generate_sql, left_pad, prefix_length


def row_seed(seed: int, source: Sequence[int], sample: int) -> int:
    """A 63-bit seed from (seed, prompt token ids, sample number): the same wherever the prompt is batched."""
    digest = hashlib.sha1(f"{seed}:{sample}:{','.join(map(str, source))}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class RowSampler:
    """A logits processor that samples every row from its own stream and records the raw token log-probs."""

    def __init__(self, uniforms: torch.Tensor, temperature: float, top_p: float, prompt_width: int):
        self.uniforms, self.temperature, self.top_p, self.width = uniforms, temperature, top_p, prompt_width
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.width
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(before >= self.top_p, 0.0)  # the nucleus; the top token always stays
        cdf = sorted_probs.cumsum(dim=-1)
        u = self.uniforms[:, step].to(cdf.device).unsqueeze(1) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u).clamp(max=cdf.shape[1] - 1)
        tokens = order.gather(1, pick).squeeze(1)
        self.logprobs.append(torch.log_softmax(scores.float(), dim=-1).gather(1, tokens[:, None]).squeeze(1).cpu())
        chosen = torch.full_like(scores, float("-inf"))
        chosen.scatter_(1, tokens[:, None], 0.0)
        return chosen


def _mean_logprob(logprobs: list[torch.Tensor], new_tokens: torch.Tensor, eos_id: int) -> list[float]:
    """Per row: the mean log-prob of the generated tokens up to and including the first EOS."""
    if not logprobs:
        return [0.0] * new_tokens.shape[0]
    lp = torch.stack(logprobs, dim=1)[:, : new_tokens.shape[1]]
    is_eos = new_tokens[:, : lp.shape[1]] == eos_id
    steps = torch.arange(lp.shape[1])[None, :]
    first_eos = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full((lp.shape[0],), lp.shape[1] - 1))
    mask = steps <= first_eos[:, None]
    return ((lp * mask).sum(1) / mask.sum(1).clamp(min=1)).tolist()


def _distinct(cands: list[Candidate]) -> list[Candidate]:
    seen, out = set(), []
    for c in cands:
        if c.sql not in seen:
            seen.add(c.sql)
            out.append(c)
    return out


@torch.no_grad()
def generate_candidates(model, tokenizer, sources: Sequence[Sequence[int]], mode: str, decoding: Decoding, *,
                        batch_size: int = 16, max_new_tokens: int = 128, progress=None,
                        synced_gpus: bool = False) -> list[list[Candidate]]:
    """Per source: its distinct candidate SQL, best first (beam rank; samples by mean log-prob)."""
    if mode == "greedy":
        sqls = generate_sql(model, tokenizer, sources, batch_size=batch_size, max_new_tokens=max_new_tokens,
                            progress=progress, synced_gpus=synced_gpus)
        return [[Candidate(s)] for s in sqls]
    if prefix_length(model):  # PEFT's generate() drops trained prefixes (see generate.py): refuse, do not mislead
        raise UserError(f"eval.decoding.strategy={decoding.strategy} needs {mode} candidates, which peft=ptuning "
                        "models cannot generate (their prefixes apply in greedy decoding only); use greedy")
    n = decoding.num_beams if mode == "beam" else decoding.num_samples
    per_call = max(1, batch_size // n)  # prompts per generate call: about batch_size rows, as greedy
    device = next(p for p in model.parameters()).device
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
    out: list[list[Candidate]] = [[] for _ in sources]
    with eval_mode(model):
        for start in range(0, len(order), per_call):
            idx = order[start: start + per_call]
            input_ids, attention = left_pad([sources[i] for i in idx], tokenizer.pad_token_id)
            rows = _generate_rows(model, tokenizer, input_ids.to(device), attention.to(device), mode, n, decoding,
                                  [sources[i] for i in idx], max_new_tokens, synced_gpus)
            for k, i in enumerate(idx):
                cands = rows[k * n: (k + 1) * n]
                if mode == "sample":
                    cands = sorted(cands, key=lambda c: -c.score)
                out[i] = _distinct(cands)
            if progress is not None:
                progress(len(idx))
    return out


def sample_rows(model, tokenizer, input_ids, attention, sources, n, decoding, max_new_tokens,
                synced_gpus=False) -> tuple[torch.Tensor, list[float]]:
    """`n` seeded samples per left-padded prompt (rows grouped by prompt): (the new token ids, padded after EOS;
    each row's mean token log-prob). Row j of a prompt draws from `row_seed(decoding.seed, its source ids, j)`."""
    from transformers import LogitsProcessorList

    width = input_ids.shape[1]
    uniforms = torch.stack([
        torch.rand(max_new_tokens, generator=torch.Generator().manual_seed(row_seed(decoding.seed, src, j)))
        for src in sources for j in range(n)])
    sampler = RowSampler(uniforms, decoding.temperature, decoding.top_p, width)
    out = model.generate(input_ids=input_ids.repeat_interleave(n, 0), attention_mask=attention.repeat_interleave(n, 0),
                         max_new_tokens=max_new_tokens, use_cache=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, synced_gpus=synced_gpus, do_sample=False,
                         return_dict_in_generate=True, num_beams=1, logits_processor=LogitsProcessorList([sampler]))
    new_tokens = out.sequences[:, width:]
    return new_tokens, _mean_logprob(sampler.logprobs, new_tokens.cpu(), tokenizer.eos_token_id)


def _generate_rows(model, tokenizer, input_ids, attention, mode, n, decoding, sources, max_new_tokens,
                   synced_gpus) -> list[Candidate]:
    """n candidates per prompt, rows grouped by prompt (prompt 0's n rows first)."""
    width = input_ids.shape[1]
    common = dict(input_ids=input_ids, attention_mask=attention, max_new_tokens=max_new_tokens, use_cache=True,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, synced_gpus=synced_gpus,
                  do_sample=False, return_dict_in_generate=True)
    if mode == "beam":
        out = model.generate(**common, num_beams=n, num_return_sequences=n, output_scores=True)
        scores = out.sequences_scores.tolist() if n > 1 else [0.0] * out.sequences.shape[0]
        new_tokens = out.sequences[:, width:]
    elif mode == "sample":
        new_tokens, scores = sample_rows(model, tokenizer, input_ids, attention, sources, n, decoding, max_new_tokens,
                                         synced_gpus)
    else:
        raise ValueError(f"unknown generation mode {mode!r}")
    return [Candidate(extract_sql(tokenizer.decode(new_tokens[r], skip_special_tokens=True)), float(scores[r]))
            for r in range(new_tokens.shape[0])]


# --- one process: the model here, executions through an evaluator --------------------------------------------------


def decode_local(model, tokenizer, sources: Sequence[Sequence[int]], db_files: Sequence[str], decoding: Decoding, *,
                 evaluator=None, batch_size: int = 16, max_new_tokens: int = 128, progress=None,
                 synced_gpus: bool = False, timings: Timings | None = None) -> list[Prediction]:
    """`decode` with this process's model; `evaluator` (an ExecutionEvaluator) runs candidates when the strategy
    executes them. `db_files[i]`: the SQLite file example i's SQL runs on (ignored by non-executing strategies)."""

    def generate(indices: list[int], mode: str) -> list[list[Candidate]]:
        return generate_candidates(model, tokenizer, [sources[i] for i in indices], mode, decoding,
                                   batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   progress=progress if mode == decoding.first_mode else None,
                                   synced_gpus=synced_gpus)

    execute = executor(evaluator) if evaluator is not None else None
    return decode(len(sources), db_files, decoding, generate, execute, timings)
