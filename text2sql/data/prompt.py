"""DB-GPT-Hub records, chat templates and tokenisation with loss on the target only.

A record is ``{"db_id", "instruction", "input", "output", "history": []}`` exactly as DB-GPT-Hub writes it,
so adapters trained there and here see the same prompt. The prompt is ``instruction + "\\n" + input``
wrapped by a template; source and target are tokenised separately so the label boundary is exact.

A multi-turn record (SParC, CoSQL) carries the earlier turns of its interaction in ``history``, as
``[input, output]`` pairs; the template renders them as earlier chat turns.

When a source is longer than ``max_source_length`` we cut the oldest history turns first (``history``), then
the *schema text*, never the question or the
``###Response:`` cue (DB-GPT-Hub cuts the tail and so loses the question). Schema cuts, in order, until it fits:
trailing foreign-key lines (``fk_lines``), non-key columns of the table with most of them (``columns``),
whole table sentences from the last (``tables``); if the question alone is still too long, the middle of the
token sequence goes (``hard``). A target longer than ``max_target_length`` keeps its eos (``target``).

Tokenizer interface assumed: ``tokenizer(text, add_special_tokens=False)["input_ids"]``, ``bos_token_id``
and ``eos_token_id`` (any Hugging Face tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from text2sql.data.forms import ONE_SHOT_INSTRUCTION, check_form, create_statements
from text2sql.data import chat
from text2sql.data.schema import SchemaParts, parse_schema_text, schema_text
from text2sql.data.spider import SpiderDataset, SpiderExample, SpiderSchema
from text2sql.errors import UserError

# Byte for byte DB-GPT-Hub's INSTRUCTION_PROMPT: no space after "me." and a line holding a lone '"'.
INSTRUCTION = (
    "I want you to act as a SQL terminal in front of an example database, "
    "you need only to return the sql command to me.Below is an instruction that describes a task, "
    'Write a response that appropriately completes the request.\n"\n##Instruction:\n{}\n'
)
INPUT_FORMAT = "###Input:\n{}\n\n###Response:"
# BIRD's external knowledge, placed as BIRD's baselines place it: its own "-- External Knowledge:" line just
# before the question (bird-bench gpt_request.generate_comment_prompt); no line when a record has none.
EVIDENCE_FORMAT = "-- External Knowledge: {}\n{}"
IGNORE_INDEX = -100

# Llama-2's default system prompt as DB-GPT-Hub's llama2 template writes it (one "\n" between paragraphs,
# two spaces after "safe.").
LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. "
    "Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n"
    "If a question does not make any sense, or is not factually coherent, "
    "explain why instead of answering something not correct. "
    "If you don't know the answer to a question, please don't share false information."
)

TRUNCATION_TAGS = ("fk_lines", "columns", "tables", "hard", "target", "history")  # history: cut first
# The instruction of each prompt form (text2sql.data.forms); `code` puts CREATE statements where the schema goes.
INSTRUCTIONS = {"zero_shot": INSTRUCTION, "one_shot": ONE_SHOT_INSTRUCTION, "code": INSTRUCTION}


def question_text(example: SpiderExample) -> str:
    """The question as the prompt shows it: with BIRD's evidence line before it when the example has one."""
    evidence = getattr(example, "evidence", "")
    return EVIDENCE_FORMAT.format(evidence, example.question) if evidence else example.question


def make_record(example: SpiderExample, schema: SpiderSchema, form: str = "zero_shot",
                schema_source: str | None = None) -> dict:
    """One DB-GPT-Hub training record; the gold query is kept unchanged. `schema_source` replaces the schema
    sentences (the `code` form's CREATE statements)."""
    return {
        "db_id": example.db_id,
        "instruction": INSTRUCTIONS[form].format(schema_text(schema) if schema_source is None else schema_source),
        "input": INPUT_FORMAT.format(question_text(example)),
        "output": example.query,
        "history": [],
    }


HISTORY_MODES = ("earlier", "dbgpt_hub")


def check_history(mode: str) -> str:
    if mode not in HISTORY_MODES:
        raise UserError(f"unknown dataset.history={mode!r}; choose one of {', '.join(HISTORY_MODES)}")
    return mode


def add_history(records: list[dict], interactions: Sequence[int], mode: str = "earlier") -> list[dict]:
    """Give each record the (input, output) pairs of its interaction's turns, as DB-GPT-Hub's `is_multiple_turn`
    branch builds them (records of one interaction are consecutive, in turn order).

    `earlier` (default): the turns before it, which is what DB-GPT-Hub's code means to build. `dbgpt_hub`: what
    its file really holds: it hands one list object to every turn and appends to it afterwards, so every turn's
    history is the *whole* interaction, its own answer and later turns included (byte-identical records, for
    reproducing its numbers; the prompt then contains the answer, in training and in dev scoring alike).
    """
    check_history(mode)
    turns_of: dict[int, list[list[str]]] = {}
    for record, interaction in zip(records, interactions, strict=True):
        turns_of.setdefault(interaction, []).append([record["input"], record["output"]])
    seen: dict[int, int] = {}  # turns of each interaction met so far
    for record, interaction in zip(records, interactions, strict=True):
        k = seen[interaction] = seen.get(interaction, 0) + 1
        shown = turns_of[interaction][:k - 1] if mode == "earlier" else turns_of[interaction]
        record["history"] = [list(pair) for pair in shown]  # each record its own copy: a cut touches no other
    return records


def make_records(dataset: SpiderDataset, split: str, form: str = "zero_shot", history: str = "earlier") -> list[dict]:
    """The records of one split, in source order (the loader knows no prompt format; this module does).

    A dataset with `interaction_ids` (SParC, CoSQL) gets each turn's history (`add_history`'s `history` mode)."""
    check_form(form)
    codes: dict[str, str] = {}

    def source(db_id: str) -> str | None:
        if form != "code":
            return None
        if db_id not in codes:
            codes[db_id] = create_statements(dataset.db_dir(split), db_id)
        return codes[db_id]

    records = [make_record(ex, schema, form, source(ex.db_id)) for ex, schema in dataset.pairs(split)]
    interaction_ids = getattr(dataset, "interaction_ids", None)
    return add_history(records, interaction_ids(split), history) if interaction_ids else records


@dataclass(frozen=True)
class Template:
    """How a prompt (instruction + "\\n" + input) becomes the source text; add one to TEMPLATES for a new model.

    A record's `history` ([query, answer] pairs, earlier turns) renders as DB-GPT-Hub's templates encode it: the
    first turn with the system prompt (`source`), later ones as `turn`, each answer followed by eos and the next
    turn by bos. `chat` templates defer to the tokenizer's own chat template (text2sql.data.chat).
    """

    name: str
    source: str  # format string with {system} and {prompt}: the first turn
    default_system: str = ""
    add_bos: bool = True  # prepend the tokenizer's bos id when it has one
    turn: str = "{prompt}"  # a later turn of a multi-turn conversation
    chat: bool = False  # rendered by tokenizer.apply_chat_template

    def render(self, instruction: str, input_text: str, system_prompt: str | None = None) -> str:
        """The first turn's text (no history): what a single-turn source reads as."""
        system = self.default_system if system_prompt is None else system_prompt
        return self.source.format(system=system, prompt=f"{instruction}\n{input_text}")

    def pieces(self, tokenizer: Any, record: dict, instruction: str, system_prompt: str | None) -> list:
        """The source as text pieces and special token ids (bos / eos between turns), in order."""
        history = record.get("history") or ()
        if self.chat:
            return [chat.source_text(tokenizer, instruction, record["input"], system_prompt, history)]
        bos = [tokenizer.bos_token_id] if self.add_bos and tokenizer.bos_token_id is not None else []
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        system = self.default_system if system_prompt is None else system_prompt
        out: list = []
        for i, (query, answer) in enumerate((t["input"], t["output"]) if isinstance(t, dict) else t for t in history):
            out += [*bos, (self.turn if i else self.source).format(system=system, prompt=query), answer, *eos]
        prompt = f"{instruction}\n{record['input']}"
        return [*out, *bos, (self.turn if history else self.source).format(system=system, prompt=prompt)]

    def target(self, tokenizer: Any, output: str) -> tuple[list[int], list[int]]:
        """(answer ids, the ids that end the labels: eos, or for chat the template's text up to its end-of-turn)."""
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        tail = chat.target_tail(tokenizer) if self.chat else ""
        return _ids(tokenizer, output), (_ids(tokenizer, tail) if tail else eos)


TEMPLATES: dict[str, Template] = {
    # CodeLlama-Instruct / DB-GPT-Hub's llama2: the system prompt sits inside the first [INST].
    "llama2": Template("llama2", "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{prompt} [/INST] ", LLAMA2_SYSTEM,
                       turn="[INST] {prompt} [/INST] "),
    "vanilla": Template("vanilla", "{prompt}"),
    # the tokenizer's own chat template (Qwen's ChatML, Llama 3, Mistral, DeepSeek): bos is the template's business
    "chat": Template("chat", "{prompt}", add_bos=False, chat=True),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


@dataclass
class EncodedExample:
    input_ids: list[int]  # source + target (+eos)
    labels: list[int]  # IGNORE_INDEX on every source token
    source_len: int
    truncation: str | None  # None, or tags joined by "+", e.g. "fk_lines+columns"
    full_source_len: int = 0  # lengths before any cut: what users size max_*_length from
    full_target_len: int = 0


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _cut_plan(parts: SchemaParts) -> list[tuple[str, int]]:
    """The ordered cuts (tag, table index) that shrink a schema step by step; applied by _apply."""
    plan = [("fk_lines", -1)] * len(parts.fk_lines)
    droppable = [len([c for c in t.columns if c not in t.key_columns()]) for t in parts.tables]
    while any(droppable):
        i = max(range(len(droppable)), key=lambda j: (droppable[j], j))  # most columns left; later on ties
        plan.append(("columns", i))
        droppable[i] -= 1
    plan += [("tables", -1)] * len(parts.tables)
    return plan


def _apply(parts: SchemaParts, plan: Sequence[tuple[str, int]]) -> SchemaParts:
    out = parts.copy()
    for tag, i in plan:
        if tag == "fk_lines":
            out.fk_lines.pop()
        elif tag == "columns":
            table = out.tables[i]
            keys = table.key_columns()
            last = max(j for j, c in enumerate(table.columns) if c not in keys)
            del table.columns[last]
        else:
            out.tables.pop()
    return out


def _tags(plan: Sequence[tuple[str, int]]) -> list[str]:
    return list(dict.fromkeys(tag for tag, _ in plan))


def _smallest(n: int, fits: Callable[[int], bool], guess: int | None = None) -> int:
    """Smallest k in 1..n with fits(k) for a monotone fits (n when none fits): gallop from guess, then bisect."""
    lo, hi = 0, n  # invariant: fits(lo) is False (or lo == 0), fits(hi) is True (or hi == n)
    if guess is not None:
        k, step = min(max(guess, 1), n), 1
        if fits(k):
            hi = k
            while hi - step >= 1 and fits(hi - step):
                hi, step = hi - step, step * 2
            lo = max(hi - step, 0)
        else:
            lo = k
            while lo + step < n and not fits(lo + step):
                lo, step = lo + step, step * 2
            hi = min(lo + step, n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


def _fit_source(
    record: dict, tokenizer: Any, template: Template, max_len: int, system_prompt: str | None
) -> tuple[list[int], str | None, int]:
    """Source ids within max_len, the truncation tag, and the untruncated length: the oldest history turns go
    first, then schema pieces (`_cut_schema`)."""
    n_bos = int(template.add_bos and tokenizer.bos_token_id is not None)
    history = list(record.get("history") or [])

    def encode(instruction: str) -> list[int]:
        pieces = template.pieces(tokenizer, dict(record, history=history), instruction, system_prompt)
        return [i for p in pieces for i in (_ids(tokenizer, p) if isinstance(p, str) else [p])]

    ids = encode(record["instruction"])
    full = len(ids)
    if full <= max_len:
        return ids, None, full
    tags: list[str] = []
    while history and len(ids) > max_len:
        del history[0]
        ids, tags = encode(record["instruction"]), ["history"]
    if len(ids) > max_len:
        ids, more = _cut_schema(record, ids, encode, tokenizer, template, max_len, system_prompt, n_bos)
        tags += more
    return ids, "+".join(tags), full


def _cut_schema(record: dict, ids: list[int], encode: Callable[[str], list[int]], tokenizer: Any, template: Template,
                max_len: int, system_prompt: str | None, n_bos: int) -> tuple[list[int], list[str]]:
    """Cut schema pieces (then, if need be, the middle) of a source without history until it fits."""
    full, instruction = len(ids), record["instruction"]
    parts, form = None, INSTRUCTION
    for form in dict.fromkeys(INSTRUCTIONS.values()):
        head, tail = form.split("{}")
        if instruction.startswith(head) and instruction.endswith(tail):
            parts = parse_schema_text(instruction[len(head) : len(instruction) - len(tail)])
            break
    tags: list[str] = []
    if parts is not None and (plan := _cut_plan(parts)):
        schema_chars = len(parts.render())
        encoded: dict[int, list[int]] = {}

        def source_after(k: int) -> list[int]:
            if k not in encoded:
                encoded[k] = encode(form.format(_apply(parts, plan[:k]).render()))
            return encoded[k]

        # guess from characters (tokens per char of this source), then settle with a few exact encodings
        text = template.pieces(tokenizer, dict(record, history=[]), instruction, system_prompt)
        per_char = full / sum(len(p) if isinstance(p, str) else 1 for p in text)
        guess = _smallest(len(plan), lambda k: (
            full - (schema_chars - len(_apply(parts, plan[:k]).render())) * per_char <= max_len))
        k = _smallest(len(plan), lambda k: len(source_after(k)) <= max_len, guess)
        ids, tags = source_after(k), _tags(plan[:k])
    if len(ids) > max_len:  # the question (or a foreign instruction) alone is too long: keep both ends
        last = template.pieces(tokenizer, dict(record, history=[]), "", system_prompt)[-1]
        suffix = last.rsplit(record["input"], 1)[1] if record["input"] in last else ""
        keep_end = min(len(_ids(tokenizer, f"\n{record['input']}{suffix}")) + 1, max_len - n_bos)
        ids = ids[: max_len - keep_end] + ids[len(ids) - keep_end :]
        tags.append("hard")
    return ids, tags


def encode_source(
    record: dict, tokenizer: Any, template: str, max_source_length: int, system_prompt: str | None = None
) -> tuple[list[int], str | None]:
    """Prompt ids for generation, cut exactly as in training."""
    ids, tag, _ = _fit_source(record, tokenizer, get_template(template), max_source_length, system_prompt)
    return ids, tag


def encode_record(
    record: dict,
    tokenizer: Any,
    template: str,
    max_source_length: int,
    max_target_length: int,
    system_prompt: str | None = None,
) -> EncodedExample:
    """Token ids and labels (loss on the target and its eos / end-of-turn only; history answers are context)."""
    source, tag, full_source = _fit_source(
        record, tokenizer, get_template(template), max_source_length, system_prompt
    )
    target, eos = get_template(template).target(tokenizer, record["output"])
    full_target = len(target) + len(eos)
    if full_target > max_target_length:
        target = target[: max(max_target_length - len(eos), 0)]
        tag = f"{tag}+target" if tag else "target"
    target += eos
    return EncodedExample(
        input_ids=source + target,
        labels=[IGNORE_INDEX] * len(source) + target,
        source_len=len(source),
        truncation=tag,
        full_source_len=full_source,
        full_target_len=full_target,
    )


def truncation_counts(encoded: Sequence[EncodedExample]) -> dict[str, int]:
    """How many examples were cut, overall and per kind of cut (an example may count under several)."""
    counts = {"examples": len(encoded), "truncated": 0, **{tag: 0 for tag in TRUNCATION_TAGS}}
    for ex in encoded:
        if ex.truncation:
            counts["truncated"] += 1
            for tag in ex.truncation.split("+"):
                counts[tag] = counts.get(tag, 0) + 1
    return counts


def percentiles(values: Sequence[int], prefix: str) -> dict[str, int]:
    """p50 / p95 / max of a list of lengths, keyed f"{prefix}_p50" etc. (zeros for an empty list)."""
    arr = np.asarray(values if len(values) else [0])
    p50, p95 = np.percentile(arr, [50, 95], method="higher")
    return {f"{prefix}_p50": int(p50), f"{prefix}_p95": int(p95), f"{prefix}_max": int(arr.max())}


def length_stats(encoded: Sequence[EncodedExample]) -> dict[str, int]:
    """Token lengths *before* truncation (bos/eos included): count, source_p50/p95/max, target_p50/p95/max."""
    return {
        "count": len(encoded),
        **percentiles([e.full_source_len for e in encoded], "source"),
        **percentiles([e.full_target_len for e in encoded], "target"),
    }


def record_lengths(records: Sequence[dict], measure: Callable[[str], int] = len) -> dict[str, int]:
    """Length stats without a tokenizer (characters by default) of prompt and output text."""
    return {
        "count": len(records),
        **percentiles([measure(f"{r['instruction']}\n{r['input']}") for r in records], "source"),
        **percentiles([measure(r["output"]) for r in records], "target"),
    }
