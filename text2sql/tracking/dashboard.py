"""`text2sql dashboard`: a ready W&B workspace for text2sql runs and sweeps, built with `wandb-workspaces`.

Sections: execution accuracy per epoch, EX per hardness, the share of each verdict, losses and learning rate,
the example-prediction table and, for a sweep (`--sweep-group` / `--sweep-dir`), a parallel-coordinates panel
over the swept keys into the best EX plus one scatter per swept key. Every metric name comes from
`text2sql.eval.metric_names`, the module the EX callback logs with. `--print` writes the workspace as JSON (what
would be sent to W&B) without contacting W&B; `--sketch PNG` draws its layout from that JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from text2sql.eval import metric_names as names
from text2sql.errors import UserError

DEFAULT_NAME = "text2sql"
BEST_EX = f"{names.EX}.max"  # the run summary keeps the max EX (define_metric(summary="max")): W&B shows it as .max


# -- the workspace --------------------------------------------------------------------------------------------
def build_workspace(entity: str, project: str, sweep_group: str | None = None, swept: list[str] = (),
                    name: str | None = None):
    """A `wandb_workspaces.workspaces.Workspace`; nothing is sent to W&B until `.save()`."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    def line(title, y, x=names.EPOCH, **kw):
        return wr.LinePlot(title=title, x=x, y=list(y), **kw)

    sections = []
    if sweep_group is not None:
        ex = wr.SummaryMetric(BEST_EX)
        panels = [wr.ParallelCoordinatesPlot(
            title="swept keys -> best EX",
            columns=[wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in swept]
            + [wr.ParallelCoordinatesPlotColumn(metric=ex, display_name="best EX")])]
        panels += [wr.ScatterPlot(title=f"best EX vs {k}", x=wr.Config(k), y=ex) for k in swept]
        sections.append(ws.Section(name=f"Sweep {sweep_group}", is_open=True, panels=panels))
    sections += [
        ws.Section(name="Execution accuracy", is_open=True, panels=[
            line("EX per epoch (+ exact match if logged)", [names.EX, names.EXACT_MATCH],
                 range_y=(0, 1)),
            line("EX per hardness (+ EM if logged)",  # a BIRD run plots its difficulty levels here
                 [*names.EX_BY_HARDNESS.values(), *names.EM_BY_HARDNESS.values(), *names.EX_BY_DIFFICULTY.values()],
                 range_y=(0, 1)),
        ]),
        ws.Section(name="Verdicts", is_open=True, panels=[
            line(f"share: {status}", [key], range_y=(0, 1)) for status, key in names.STATUS_SHARES.items()
        ]),
        ws.Section(name="Loss and learning rate", is_open=True, panels=[
            line("train loss per step", [names.TRAIN_LOSS], x=names.STEP),
            line("loss per epoch", [names.TRAIN_LOSS_EPOCH, names.VAL_LOSS]),
            line("learning rate", [names.LEARNING_RATE], x=names.STEP),
        ]),
        ws.Section(name="Example predictions", is_open=True, panels=[
            wr.WeavePanelSummaryTable(table_name=names.EXAMPLES_TABLE),
        ]),
    ]
    if sweep_group is not None:  # one sweep: its jobs side by side, best first
        runset = ws.RunsetSettings(filters=[ws.Metric("group") == sweep_group],
                                   order=[ws.Ordering(ws.Summary(BEST_EX), ascending=False)])
    else:  # the whole project: one group per sweep dir (single runs stay on their own)
        runset = ws.RunsetSettings(groupby=[ws.Metric("group")])
    title = name or (f"{DEFAULT_NAME} sweep {sweep_group}" if sweep_group else DEFAULT_NAME)
    return ws.Workspace(entity=entity, project=project, name=title, sections=sections,
                        settings=ws.WorkspaceSettings(max_runs=100), runset_settings=runset)


def workspace_json(workspace) -> dict:
    """What `save()` sends to W&B (the view and its spec), as plain JSON (`_to_model`: private, see `save`)."""
    return json.loads(workspace._to_model().model_dump_json(by_alias=True, exclude_none=True))


# -- reading the JSON back: the keys each panel shows ----------------------------------------------------------
def _accessor(value: str) -> tuple[str, str]:
    """'config:peft.value.r' -> ('config', 'peft.r'); 'summary:k' -> ('summary', 'k')."""
    section, _, key = value.partition(":")
    if section == "config":
        head, _, rest = key.partition(".value")
        key = head + rest
    return section, key


def _table_keys(node) -> list[str]:
    """The table a Weave summary-table panel picks: the const under its `pick` op's `key` input."""
    found = []
    if isinstance(node, dict):
        key = node.get("key")
        if isinstance(key, dict) and key.get("nodeType") == "const" and isinstance(key.get("val"), str):
            found.append(key["val"])
        for value in node.values():
            found += _table_keys(value)
    elif isinstance(node, list):
        for value in node:
            found += _table_keys(value)
    return found


def panels_of(view: dict) -> list[dict]:
    """[{section, type, title, history: [...], summary: [...], config: [...], table: [...]}] from workspace JSON."""
    out = []
    for section in view["spec"]["section"]["panelBankConfig"]["sections"]:
        for panel in section["panels"]:
            cfg, kind = panel.get("config", {}), panel["viewType"]
            row = {"section": section["name"], "type": kind, "title": cfg.get("chartTitle"),
                   "history": [], "summary": [], "config": [], "table": []}
            if kind == "Run History Line Plot":
                row["history"] = [*cfg.get("metrics", []), cfg["xAxis"]]
            elif kind in ("Scatter Plot", "Parallel Coordinates Plot"):
                accessors = ([cfg["xAxis"], cfg["yAxis"]] if kind == "Scatter Plot"
                             else [c["accessor"] for c in cfg["columns"]])
                for section_name, key in map(_accessor, accessors):
                    row[section_name].append(key)
                if kind == "Parallel Coordinates Plot":
                    row["title"] = cfg.get("chartTitle")
            elif kind == "Weave":
                row["type"], row["table"] = "Table", _table_keys(cfg)
            out.append(row)
    return out


# -- drawing the layout (README picture) -----------------------------------------------------------------------
def sketch(view: dict, png: Path) -> Path:
    """A picture of the workspace layout: one row per section, one box per panel with the keys it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch

    panels = panels_of(view)
    sections: dict[str, list[dict]] = {}
    for p in panels:
        sections.setdefault(p["section"], []).append(p)
    per_row = {sec["name"]: sec.get("flowConfig", {}).get("columnsPerPage", 3)  # W&B's panel grid per section
               for sec in view["spec"]["section"]["panelBankConfig"]["sections"]}
    cols = max(per_row.values(), default=3)
    rows = sum(-(-len(ps) // per_row[name]) for name, ps in sections.items())
    height = rows * 1.5 + len(sections) * 0.55 + 0.8
    fig, ax = plt.subplots(figsize=(cols * 3.6, height))
    ax.set_xlim(0, cols * 3.6)
    ax.set_ylim(0, height)
    ax.axis("off")
    ax.text(0.1, height - 0.35, f"W&B workspace \"{view['displayName']}\" ({view['entity']}/{view['project']})",
            fontsize=13, weight="bold", va="center")
    ax.text(0.1, height - 0.62, "layout drawn from `text2sql dashboard --print` (the JSON sent to W&B), not a screenshot",
            fontsize=8, color="#555555", va="center")
    y = height - 0.8
    colors = {"Run History Line Plot": "#dbe9f6", "Scatter Plot": "#fde2c8", "Parallel Coordinates Plot": "#fde2c8",
              "Table": "#e2f0d9"}
    for name, ps in sections.items():
        ax.text(0.1, y - 0.2, f"▾ {name}", fontsize=11, weight="bold", va="center")
        y -= 0.45
        for i, p in enumerate(ps):
            if i and i % per_row[name] == 0:
                y -= 1.5
            x = (i % per_row[name]) * 3.6 + 0.1
            ax.add_patch(FancyBboxPatch((x, y - 1.35), 3.4, 1.25, boxstyle="round,pad=0.02",
                                        fc=colors.get(p["type"], "#eeeeee"), ec="#666666"))
            title = p["title"] or (f"table {p['table'][0]}" if p["table"] else p["type"])
            ax.text(x + 0.08, y - 0.25, title[:40], fontsize=8, weight="bold", va="center")
            keys = ([f"y: {k}" for k in p["history"][:-1]] + [f"x: {p['history'][-1]}"] if p["history"] else
                    [f"config: {k}" for k in p["config"]] + [f"summary: {k}" for k in p["summary"]]
                    + [f"table: {k}" for k in p["table"]])
            shown = keys if len(keys) <= 6 else keys[:5] + [f"... +{len(keys) - 5} more"]
            ax.text(x + 0.08, y - 0.45, "\n".join(k[:52] for k in shown), fontsize=6.5, va="top", family="monospace")
            ax.text(x + 3.32, y - 1.28, p["type"], fontsize=6, ha="right", va="bottom", color="#555555")
        y -= 1.55
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return png


# -- sweeps ----------------------------------------------------------------------------------------------------
def sweep_of(sweep_dir: Path) -> tuple[str, list[str]]:
    """(W&B group, swept keys) of a local multirun dir: the group is named as text2sql.tracking.logger.wandb_identity does."""
    from text2sql.sweep.jobs import declared_sweep_keys, find_job_dirs, read_job, swept_keys

    sweep_dir = Path(sweep_dir).resolve()
    jobs = [read_job(j) for j in find_job_dirs(sweep_dir)]
    if not jobs:
        raise UserError(f"{sweep_dir} holds no sweep jobs (expected <dir>/<job>/.hydra/overrides.yaml)")
    group = f"{sweep_dir.parent.name}_{sweep_dir.name}" if sweep_dir.parent.name else sweep_dir.name
    return group, swept_keys(jobs, declared_sweep_keys(sweep_dir))


def swept_keys_online(entity: str, project: str, group: str) -> list[str]:
    """Override keys (top-level 'a.b' config keys) whose value differs between the runs of a W&B group."""
    import wandb

    values: dict[str, set] = {}
    for run in wandb.Api().runs(f"{entity}/{project}", filters={"group": group}):
        for key, value in run.config.items():
            if "." in key:
                values.setdefault(key, set()).add(repr(value))
    return [k for k, v in values.items() if len(v) > 1]


# -- saving: create, or update the workspace of the same name --------------------------------------------------
_VIEWS = """query Views($entityName: String, $name: String) {
  project(name: $name, entityName: $entityName) {
    allViews(viewType: "project-view") { edges { node { id name displayName } } }
  }
}"""


def save(workspace) -> str:
    """Save `workspace`, updating the saved view of the same name in place (its URL stays).

    wandb-workspaces has no public "find a view by name": this uses its `_graphql.execute_graphql` and the
    workspace's `_internal_name` / `_internal_id`. Checked against wandb-workspaces 0.4.13; pyproject caps it
    below 0.5.
    """
    import wandb
    from wandb_workspaces._graphql import execute_graphql

    response = execute_graphql(wandb.Api(), _VIEWS, {"entityName": workspace.entity, "name": workspace.project})
    edges = ((response.get("project") or {}).get("allViews") or {}).get("edges") or []
    for edge in edges:
        if edge["node"]["displayName"] == workspace.name:  # update it in place, keeping its URL
            workspace._internal_name, workspace._internal_id = edge["node"]["name"], edge["node"]["id"]
            break
    workspace.save()
    return workspace.url


# -- the verb ---------------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--entity", required=True, help="W&B entity (user or team)")
    parser.add_argument("--project", required=True, help="W&B project the runs were logged to")
    parser.add_argument("--name", default=None, help=f"workspace name (default {DEFAULT_NAME!r}, or with the sweep group)")
    parser.add_argument("--sweep-group", default=None, help="the W&B group of one sweep (its dir: DATE_TIME)")
    parser.add_argument("--sweep-dir", type=Path, default=None,
                        help="a local multirun dir: its group and swept keys (no W&B access needed)")
    parser.add_argument("--swept", nargs="+", default=None, metavar="KEY", help="swept config keys, e.g. peft.r optim.lr")
    parser.add_argument("--print", dest="print_json", nargs="?", const="-", default=None, metavar="FILE",
                        help="write the workspace as JSON (to FILE, default stdout) instead of saving it to W&B")
    parser.add_argument("--sketch", type=Path, default=None, metavar="PNG", help="also draw the layout into PNG")


def run(args: argparse.Namespace) -> int:
    group, swept = args.sweep_group, args.swept
    if args.sweep_dir is not None:
        if not args.sweep_dir.is_dir():
            raise UserError(f"sweep dir not found: {args.sweep_dir}")
        dir_group, dir_swept = sweep_of(args.sweep_dir)
        group, swept = group or dir_group, swept or dir_swept
    if group is not None and swept is None:
        if args.print_json is not None:
            raise UserError("--print with --sweep-group needs the swept keys: add --swept KEY... or --sweep-dir DIR")
        try:
            swept = swept_keys_online(args.entity, args.project, group)
        except Exception as err:  # noqa: BLE001 - network/login: one line
            raise UserError(f"cannot read the runs of group {group} from W&B: {str(err).splitlines()[0]}") from None
    workspace = build_workspace(args.entity, args.project, group, swept or [], args.name)
    view = workspace_json(workspace)
    if args.sketch is not None:
        print(f"wrote {sketch(view, args.sketch)}", file=sys.stderr)
    if args.print_json is not None:
        text = json.dumps(view, indent=1) + "\n"
        if args.print_json == "-":
            sys.stdout.write(text)
        else:
            Path(args.print_json).write_text(text, encoding="utf-8")
            print(f"wrote {args.print_json}", file=sys.stderr)
        return 0
    try:
        url = save(workspace)
    except Exception as err:  # noqa: BLE001 - network/login/permissions: one line
        raise UserError(f"cannot save the workspace to W&B (needs network and `wandb login`): "
                       f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}") from None
    print(f"workspace saved: {url}")
    return 0
