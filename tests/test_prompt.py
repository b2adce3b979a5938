"""Records, templates and question-safe truncation, with a character-level tokenizer built locally."""

from __future__ import annotations

import pytest
from tokenizers import Regex, Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from text2sql.data.prompt import (
    IGNORE_INDEX,
    INSTRUCTION,
    LLAMA2_SYSTEM,
    EncodedExample,
    encode_record,
    encode_source,
    length_stats,
    make_record,
    truncation_counts,
)
from text2sql.data.schema import schema_text
from text2sql.data.spider import SpiderExample, SpiderSchema

CHARS = [chr(i) for i in range(32, 127)] + ["\n"]
VOCAB = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
INVERSE = {i: c for c, i in VOCAB.items()}
BOS, EOS = 1, 2


def char_tokenizer(bos: bool = True) -> PreTrainedTokenizerFast:
    """One token per character, so expected ids can be written out by hand; no download involved."""
    tok = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    specials = {"bos_token": "<s>"} if bos else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>", **specials)


def ids(text: str) -> list[int]:
    return [VOCAB[c] for c in text]


def text(token_ids: list[int]) -> str:
    return "".join(INVERSE[i] for i in token_ids)


def wide_schema(n_tables: int = 4, n_cols: int = 12) -> SpiderSchema:
    """Tables t0..tN with a PK id and many columns, each table pointing at the previous one."""
    cols: list[tuple[int, str]] = [(-1, "*")]
    pks, fks = [], []
    for t in range(n_tables):
        pks.append(len(cols))
        cols += [(t, "id"), (t, "parent_id")] + [(t, f"col_{t}_{c}") for c in range(n_cols - 2)]
        if t:
            fks.append([pks[t] + 1, pks[t - 1]])
    return SpiderSchema("wide", [f"t{t}" for t in range(n_tables)], cols, ["text"] * len(cols), pks, fks)


def record(question: str = "How many rows?", query: str = "SELECT count(*) FROM t0") -> dict:
    return make_record(SpiderExample("wide", question, query), wide_schema())


def test_instruction_is_byte_exact() -> None:
    assert INSTRUCTION == (
        "I want you to act as a SQL terminal in front of an example database, you need only to return the sql "
        "command to me.Below is an instruction that describes a task, Write a response that appropriately "
        'completes the request.\n"\n##Instruction:\n{}\n'
    )


def test_make_record_shape() -> None:
    rec = record("Q?", "SELECT 1")
    assert list(rec) == ["db_id", "instruction", "input", "output", "history"]
    assert rec["input"] == "###Input:\nQ?\n\n###Response:"
    assert rec["output"] == "SELECT 1" and rec["history"] == []
    assert rec["instruction"].startswith(INSTRUCTION.split("{}")[0] + "wide contains tables such as t0, t1")


def test_llama2_exact_token_layout() -> None:
    rec = record()
    enc = encode_record(rec, char_tokenizer(), "llama2", 100_000, 512)
    source = (
        f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\n{rec['instruction']}\n{rec['input']} [/INST] "
    )
    expected_source = [BOS] + ids(source)
    expected_target = ids(rec["output"]) + [EOS]
    assert enc.input_ids == expected_source + expected_target
    assert enc.labels == [IGNORE_INDEX] * len(expected_source) + expected_target
    assert enc.source_len == len(expected_source) and enc.truncation is None
    assert encode_source(rec, char_tokenizer(), "llama2", 100_000) == (expected_source, None)


def test_llama2_custom_system_prompt() -> None:
    rec = record()
    src, _ = encode_source(rec, char_tokenizer(), "llama2", 100_000, system_prompt="Be SQL.")
    assert text(src[1:]).startswith("[INST] <<SYS>>\nBe SQL.\n<</SYS>>\n\n" + rec["instruction"])


@pytest.mark.parametrize("has_bos", [True, False])
def test_vanilla_layout(has_bos: bool) -> None:
    rec = record()
    enc = encode_record(rec, char_tokenizer(bos=has_bos), "vanilla", 100_000, 512)
    source = ([BOS] if has_bos else []) + ids(f"{rec['instruction']}\n{rec['input']}")
    assert enc.input_ids == source + ids(rec["output"]) + [EOS]
    assert enc.labels[: len(source)] == [IGNORE_INDEX] * len(source)


def test_unknown_template() -> None:
    with pytest.raises(ValueError, match="unknown template 'chatml'"):
        encode_record(record(), char_tokenizer(), "chatml", 10, 10)


def budget_for(rec: dict, drop: str) -> int:
    """A source budget that forces cutting at least `drop` off the untruncated llama2 source."""
    full = len(encode_source(rec, char_tokenizer(), "llama2", 100_000)[0])
    return full - len(drop)


def test_fk_lines_go_first() -> None:
    rec = record()
    enc = encode_record(rec, char_tokenizer(), "llama2", budget_for(rec, "The parent_id of t3 is the fk"), 512)
    source = text(enc.input_ids[1 : enc.source_len])
    assert enc.truncation == "fk_lines" and enc.source_len <= budget_for(rec, "The parent_id of t3 is the fk")
    assert "The parent_id of t1 is the foreign key of id of t0.\n" in source  # only trailing lines dropped
    assert "The parent_id of t2 is the foreign key of id of t1.\n" in source  # and no more than needed
    assert "t3 is the foreign key" not in source
    assert "col_3_9" in source  # no column was cut


def test_question_longer_than_budget_keeps_question_and_cue() -> None:
    question = "Which rows " + "really " * 150 + "matter ?"
    rec = record(question)
    schema_len = len(schema_text(wide_schema()))
    budget = len(encode_source(rec, char_tokenizer(), "llama2", 100_000)[0]) - schema_len + 250  # ~1/4 of it
    enc = encode_record(rec, char_tokenizer(), "llama2", budget, 512)
    source = text(enc.input_ids[1 : enc.source_len])
    assert enc.source_len <= budget
    assert source.endswith(f"\n###Input:\n{question}\n\n###Response: [/INST] ")
    assert source.startswith("[INST] <<SYS>>\n") and "##Instruction:\nwide contains tables such as t0, t1" in source
    assert enc.truncation.startswith("fk_lines+columns")
    assert "is the foreign key" not in source
    assert "Table t0 has columns such as id" in source  # primary-key columns survive column cuts
    assert enc.labels[enc.source_len :] == ids(rec["output"]) + [EOS]


def test_hard_cut_when_question_alone_exceeds_budget() -> None:
    question = "word " * 400
    rec = record(question)
    enc = encode_record(rec, char_tokenizer(), "vanilla", 600, 512)
    source = text(enc.input_ids[1 : enc.source_len])
    assert enc.source_len == 600 and enc.input_ids[0] == BOS
    assert "hard" in enc.truncation
    assert source.endswith("\n\n###Response:")


def test_target_truncation_keeps_eos() -> None:
    enc = encode_record(record(query="SELECT " + "x, " * 100 + "y FROM t0"), char_tokenizer(), "llama2", 100_000, 20)
    target = enc.input_ids[enc.source_len :]
    assert len(target) == 20 and target[-1] == EOS and enc.truncation == "target"
    assert enc.full_target_len == len("SELECT " + "x, " * 100 + "y FROM t0") + 1


def test_stats_and_counts() -> None:
    encoded = [
        EncodedExample([1] * 12, [-100] * 10 + [1, 1], 10, None, 10, 2),
        EncodedExample([1] * 9, [-100] * 5 + [1] * 4, 5, "fk_lines+columns", 30, 4),
        EncodedExample([1] * 4, [-100] * 2 + [1] * 2, 2, "target", 2, 9),
    ]
    assert truncation_counts(encoded) == {
        "examples": 3, "truncated": 2, "history": 0, "fk_lines": 1, "columns": 1, "tables": 0, "hard": 0, "target": 1,
    }
    stats = length_stats(encoded)
    assert stats == {"count": 3, "source_p50": 10, "source_p95": 30, "source_max": 30,
                     "target_p50": 4, "target_p95": 9, "target_max": 9}
    assert length_stats([])["count"] == 0
