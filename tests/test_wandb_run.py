"""One real `python train.py debug=smoke` run, read back from its offline W&B files: the artifacts it logged,
every key the dashboard shows, `predict --adapter <artifact ref>` and `text2sql sync --dry-run` on it."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from text2sql.eval import metric_names as names
from text2sql.tracking.offline import read_artifacts, read_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def smoke_dir(smoke_run) -> Path:
    """The run dir of conftest's shared smoke run (`python train.py debug=smoke`, W&B offline)."""
    return smoke_run[0]


def wandb_dir(run_dir: Path) -> Path:
    (one,) = (run_dir / "wandb").glob("offline-run-*")
    return one


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def assert_files_match(artifact: dict, directory: Path) -> None:
    """The artifact's manifest is exactly the dir's files, referenced in place (absolute paths) with their MD5."""
    on_disk = {str(p.relative_to(directory)): p for p in directory.rglob("*") if p.is_file()}
    assert set(artifact["files"]) == set(on_disk)
    for rel, entry in artifact["files"].items():
        assert Path(entry["local_path"]) == on_disk[rel].resolve()
        assert entry["digest"] == md5_b64(on_disk[rel]) and entry["size"] == on_disk[rel].stat().st_size


def test_prediction_and_adapter_artifacts_in_the_offline_run(smoke_dir: Path):
    metrics = json.loads((smoke_dir / "metrics.json").read_text())
    best_epoch, last_epoch = metrics["best"]["epoch"], metrics["history"][-1]["epoch"]
    artifacts = read_artifacts(wandb_dir(smoke_dir))
    run_id = wandb_dir(smoke_dir).name.rsplit("-", 1)[-1]

    # one predictions version per epoch, holding that epoch's files; `best` last given to the best epoch
    preds = [a for a in artifacts if a["name"] == f"predictions-{run_id}"]
    assert [a["metadata"]["epoch"] for a in preds] == [row["epoch"] for row in metrics["history"]]
    for art, row in zip(preds, metrics["history"]):
        epoch = row["epoch"]
        assert art["type"] == "dataset" and f"epoch_{epoch}" in art["aliases"]
        assert set(art["files"]) == {f"epoch_{epoch}.jsonl", f"epoch_{epoch}_pred.sql"}
        for name, entry in art["files"].items():
            assert entry["digest"] == md5_b64(smoke_dir / "predictions" / name)
        assert art["metadata"][names.EX] == pytest.approx(row[names.EX])
    assert [a for a in preds if "best" in a["aliases"]][-1]["metadata"]["epoch"] == best_epoch

    # the model: the final adapter as `latest`, and the best epoch's weights as `best` with their metrics
    models = [a for a in artifacts if a["type"] == "model"]
    assert {a["name"] for a in models} == {f"adapter-{run_id}"}
    final, best = models[-1], [a for a in models if "best" in a["aliases"]]
    assert len(best) == 1
    best = best[0]
    assert final["metadata"]["epoch"] == last_epoch and "latest" in final["aliases"]
    assert_files_match(final, smoke_dir / "adapter")
    assert best["metadata"]["epoch"] == best_epoch and best["metadata"]["monitor"] == names.EX
    assert best["metadata"][names.EX] == pytest.approx(metrics["best"][names.EX])
    if best_epoch == last_epoch:
        assert best is final and not (smoke_dir / "adapter_best").exists()
        return
    # best != last: the best checkpoint was exported beside adapter/ and logged before the final one
    assert len(models) == 2 and models[0] is best
    assert_files_match(best, smoke_dir / "adapter_best")
    import torch
    from safetensors.torch import load_file

    ckpt = next((smoke_dir / "checkpoints").glob(f"epoch{best_epoch:02d}*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    saved_best = load_file(smoke_dir / "adapter_best" / "adapter_model.safetensors")
    saved_final = load_file(smoke_dir / "adapter" / "adapter_model.safetensors")
    assert saved_best.keys() == saved_final.keys()
    for key, tensor in saved_best.items():  # every saved weight is the best checkpoint's
        assert any(t.shape == tensor.shape and torch.equal(t, tensor) for t in state.values()), key
    assert any(not torch.equal(saved_best[k], saved_final[k]) for k in saved_best)


def test_every_key_the_workspace_shows_is_in_the_run(smoke_dir: Path, tmp_path: Path):
    """A renamed metric would leave an empty panel: each key of `dashboard --print` must be in the run."""
    from text2sql.cli import main
    from text2sql.tracking.dashboard import panels_of

    out = tmp_path / "ws.json"
    assert main(["dashboard", "--entity", "e", "--project", "p", "--sweep-group", "g",
                 "--swept", "peft.r", "optim.lr", "--print", str(out)]) == 0
    panels = panels_of(json.loads(out.read_text()))
    logged = read_run(wandb_dir(smoke_dir))
    history_keys = set().union(*logged["history"])
    hardness = set(names.EX_BY_HARDNESS.values())
    logged_hardness = {k for k in history_keys if k.startswith(f"{names.VAL}ex_")}
    assert logged_hardness and logged_hardness <= hardness  # the sample's dev split has easy questions only
    shown = set()
    for panel in panels:
        present = []
        for key in panel["history"]:
            shown.add(key)
            if key in history_keys:
                present.append(key)
            else:  # only exact match (another callback's) and hardness levels absent from this dev subset
                assert key in names.OPTIONAL or key in hardness, (panel["title"], key)
        for key in panel["summary"]:
            metric, _, agg = key.rpartition(".")
            assert isinstance(logged["summary"][metric], dict) and agg in logged["summary"][metric], key
            present.append(key)
        for key in panel["config"]:
            node = logged["config"]
            for part in key.split("."):
                node = node[part]
            present.append(key)
        for key in panel["table"]:
            assert logged["summary"][f"{key}/_type"] == "table-file", key
            present.append(key)
        assert present, f"panel {panel['title']!r} would be empty"
    # and the panels cover what the EX callback logs
    assert {names.EX, *names.STATUS_SHARES.values(), names.TRAIN_LOSS, names.VAL_LOSS, names.LEARNING_RATE} <= shown
    assert logged_hardness <= shown


def test_predict_accepts_an_artifact_reference(smoke_dir: Path, tmp_path: Path, monkeypatch, capsys):
    """`predict --adapter entity/project/adapter-<id>:best` downloads through wandb.Api (faked: no network)."""
    import wandb

    requested = []

    class FakeArtifact:
        name = "adapter-x:v1"

        def download(self, root):
            shutil.copytree(smoke_dir / "adapter", root)
            return root

    class FakeApi:
        def artifact(self, name, type=None):
            requested.append((name, type))
            return FakeArtifact()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setenv("TEXT2SQL_CACHE", str(REPO_ROOT / ".cache" / "text2sql"))
    from text2sql.cli import main

    out = tmp_path / "pred.sql"
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "--adapter", "me/proj/adapter-x:best", "--limit", "2", "--max-new-tokens", "8",
                 "--out", str(out), "--no-progress", "debug=smoke"]) == 0
    assert requested == [("me/proj/adapter-x:best", "model")]
    downloaded = REPO_ROOT / ".cache" / "text2sql" / "artifacts" / "adapter-x_v1"
    assert (downloaded / "adapter_config.json").is_file()
    assert len(out.read_text().splitlines()) == 2
    shutil.rmtree(downloaded)


def test_sync_dry_run_lists_the_offline_run(smoke_dir: Path, capfd):
    from text2sql.cli import main

    assert main(["sync", str(smoke_dir.parent), "--dry-run"]) == 0
    out, err = capfd.readouterr()
    assert f"sync: {wandb_dir(smoke_dir)}" in out
    assert "Would sync 1 run(s)" in out + err  # wandb's own dry run found the run file
    assert f"{wandb_dir(smoke_dir)}/run-" in out + err
