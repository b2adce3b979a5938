"""`text2sql dashboard`: the workspace JSON offline, its sweep panels, its picture, and create-or-update on save.
(The key-coverage test against a real run is in test_wandb_run.py, beside the shared smoke run.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from text2sql.eval import metric_names as names
from text2sql.cli import main
from text2sql.tracking.dashboard import build_workspace, panels_of, workspace_json

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def no_network(monkeypatch):
    """Any W&B API use fails the test: --print must not contact W&B."""
    import wandb

    def refuse(*args, **kwargs):
        raise AssertionError("contacted W&B")

    monkeypatch.setattr(wandb, "Api", refuse)


def print_json(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "ws.json"
    assert main(["dashboard", "--entity", "team", "--project", "text2sql", *args, "--print", str(out)]) == 0
    return json.loads(out.read_text())


def test_print_writes_the_workspace_without_network(tmp_path, no_network):
    view = print_json(tmp_path)
    assert (view["entity"], view["project"], view["displayName"]) == ("team", "text2sql", "text2sql")
    sections = [s["name"] for s in view["spec"]["section"]["panelBankConfig"]["sections"]]
    assert sections == ["Execution accuracy", "Verdicts", "Loss and learning rate", "Example predictions"]
    panels = panels_of(view)
    by_title = {p["title"]: p for p in panels}
    assert by_title["EX per epoch (+ exact match if logged)"]["history"] == [names.EX, names.EXACT_MATCH, names.EPOCH]
    assert set(names.EX_BY_HARDNESS.values()) <= set(by_title["EX per hardness (+ EM if logged)"]["history"])
    verdict_keys = {k for p in panels if p["section"] == "Verdicts" for k in p["history"]} - {names.EPOCH}
    assert verdict_keys == set(names.STATUS_SHARES.values())
    assert [p["table"] for p in panels if p["type"] == "Table"] == [[names.EXAMPLES_TABLE]]
    # the project view: runs grouped by their W&B group (= the sweep dir), no filter
    runset = view["spec"]["section"]["runSets"][0]
    assert runset["grouping"] == [{"section": "run", "name": "group"}] and not runset["filters"]["filters"]


def test_sweep_workspace_has_parallel_coordinates_and_one_scatter_per_key(tmp_path, no_network):
    view = print_json(tmp_path, "--sweep-group", "2026-11-25_14-03-12", "--swept", "peft.r", "optim.lr")
    panels = [p for p in panels_of(view) if p["section"] == "Sweep 2026-11-25_14-03-12"]
    assert [p["type"] for p in panels] == ["Parallel Coordinates Plot", "Scatter Plot", "Scatter Plot"]
    assert panels[0]["config"] == ["peft.r", "optim.lr"] and panels[0]["summary"] == [f"{names.EX}.max"]
    assert [(p["config"], p["summary"]) for p in panels[1:]] == [(["peft.r"], [f"{names.EX}.max"]),
                                                                  (["optim.lr"], [f"{names.EX}.max"])]
    runset = view["spec"]["section"]["runSets"][0]
    assert runset["filters"]["filters"][0]["value"] == "2026-11-25_14-03-12"
    assert view["displayName"] == "text2sql sweep 2026-11-25_14-03-12"


def test_sweep_dir_gives_the_group_and_the_swept_keys(tmp_path, no_network):
    sweep = tmp_path / "multirun" / "2026-11-25" / "14-03-12"
    for job, (r, lr) in enumerate([(4, 1e-3), (4, 2e-3), (8, 1e-3), (8, 2e-3)]):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(
            f"- peft.r={r}\n- optim.lr={lr}\n- debug=smoke\n")
    view = print_json(tmp_path, "--sweep-dir", str(sweep))
    (pc,) = [p for p in panels_of(view) if p["type"] == "Parallel Coordinates Plot"]
    assert pc["section"] == "Sweep 2026-11-25_14-03-12"  # the group text2sql.tracking.logger.wandb_identity gives the jobs
    assert pc["config"] == ["peft.r", "optim.lr"]  # debug=smoke is the same for every job: not swept


def test_bad_input_is_one_line(tmp_path, capsys, no_network):
    assert main(["dashboard", "--entity", "e", "--project", "p", "--sweep-group", "g", "--print"]) == 2
    assert main(["dashboard", "--entity", "e", "--project", "p", "--sweep-dir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--swept" in err[0] and "sweep dir not found" in err[1]


def test_names_module_matches_what_summarize_returns():
    """Every hardness level and status summarize() can produce has its name in metric_names."""
    from text2sql.eval.execute import STATUSES
    from text2sql.sql.hardness import HARDNESS_LEVELS
    from text2sql.eval.metrics import summarize

    verdicts = [{"correct": s == "correct", "hardness": h, "status": s} for h in HARDNESS_LEVELS for s in STATUSES]
    logged = {names.val_name(k) for k in summarize(verdicts) if k != "count"}
    expected = {names.EX, *names.EX_BY_HARDNESS.values(), *names.STATUS_SHARES.values()}
    assert logged == expected


def test_sketch_draws_the_layout(tmp_path, no_network):
    png = tmp_path / "ws.png"
    assert main(["dashboard", "--entity", "e", "--project", "p", "--print", str(tmp_path / "ws.json"),
                 "--sketch", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_SIGNATURE


def test_save_updates_the_workspace_of_the_same_name(monkeypatch):
    """An existing view with the same display name is updated in place (same id), not duplicated."""
    import wandb
    import wandb_workspaces._graphql as gql
    from wandb_workspaces.workspaces import internal

    from text2sql.tracking import dashboard

    sent = []
    monkeypatch.setattr(wandb, "Api", lambda: object())
    monkeypatch.setattr(gql, "execute_graphql", lambda api, query, variables: {"project": {"allViews": {"edges": [
        {"node": {"id": "other", "name": "nw-a-v", "displayName": "someone's"}},
        {"node": {"id": "VIEW1", "name": "nw-b-v", "displayName": "text2sql"}}]}}})
    monkeypatch.setattr(internal, "upsert_view2",
                        lambda view: sent.append(view) or {"upsertView": {"view": {"id": view.id, "name": view.name}}})
    monkeypatch.setattr(type(build_workspace("e", "p")), "url", property(lambda self: "https://wandb.ai/e/p"))
    workspace = build_workspace("e", "p")
    assert dashboard.save(workspace) == "https://wandb.ai/e/p"
    assert [(v.id, v.name, v.display_name) for v in sent] == [("VIEW1", "nw-b-v", "text2sql")]
    assert workspace_json(workspace)["spec"] == json.loads(sent[0].spec.model_dump_json(by_alias=True,
                                                                                         exclude_none=True))


def test_swept_keys_online_are_the_override_keys_that_differ(monkeypatch):
    import wandb

    from text2sql.tracking.dashboard import swept_keys_online

    class Run:
        def __init__(self, **config):
            self.config = {"model": {"name": "tiny"}, "seed": 42, **config}

    queried = []

    class Api:
        def runs(self, path, filters=None):
            queried.append((path, filters))
            return [Run(**{"peft.r": 4, "optim.lr": 1e-3, "debug": "smoke"}),
                    Run(**{"peft.r": 8, "optim.lr": 1e-3, "debug": "smoke"}),
                    Run(**{"peft.r": 8, "optim.lr": 2e-3, "debug": "smoke"})]

    monkeypatch.setattr(wandb, "Api", Api)
    assert swept_keys_online("team", "text2sql", "2026-11-25_14-03-12") == ["peft.r", "optim.lr"]
    assert queried == [("team/text2sql", {"group": "2026-11-25_14-03-12"})]
