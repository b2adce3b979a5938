"""Read an offline W&B run (`run-<id>.wandb`) back without a server: its history rows and summary.

Useful to check what a run logged before (or without) `wandb sync`, and for tests that prove a metric
really reached W&B. The file is a LevelDB-style log of protobuf `Record`s after a 7-byte W&B header.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

_HEADER = 7  # b":W&B" + magic (2 bytes) + version (1 byte)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes):
    pos, pending = _HEADER, b""
    while pos + 7 <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < 7:  # block trailer: padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
        elif kind == 0 and length == 0:  # zero padding at the end of a block
            pos += room - 7
        else:
            raise ValueError(f"corrupt W&B log record (type {kind}) at byte {pos}")


def run_file(run_dir: str | Path) -> Path:
    """The `.wandb` file of an offline run dir (or of the newest run under a `wandb/` dir or a training run dir)."""
    run_dir = Path(run_dir)
    files = (sorted(run_dir.glob("run-*.wandb")) or sorted(run_dir.glob("*run-*/run-*.wandb"))
             or sorted(run_dir.glob("wandb/*run-*/run-*.wandb")))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file under {run_dir}")
    return files[-1]


def read_run(run_dir: str | Path) -> dict:
    """{"history": [row, ...], "summary": {...}, "config": {...}} of one offline run."""
    from wandb.proto import wandb_internal_pb2 as pb

    history, summary, config = [], {}, {}
    for raw in _records(run_file(run_dir).read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                summary[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[_key(item)] = json.loads(item.value_json)
    return {"history": history, "summary": summary, "config": config}


def read_artifacts(run_dir: str | Path) -> list[dict]:
    """The artifacts an offline run logged, in order: name, type, aliases, metadata and files.

    `files` maps each path inside the artifact to {"local_path", "digest" (base64 MD5), "size"}: where
    `wandb sync` will read it from, so the files must still be there when the run is synced.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    artifacts = []
    for raw in _records(run_file(run_dir).read_bytes()):
        record = pb.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") != "artifact":
            continue
        art = record.artifact
        artifacts.append({
            "name": art.name,
            "type": art.type,
            "aliases": list(art.aliases),
            "metadata": json.loads(art.metadata) if art.metadata else {},
            "files": {e.path: {"local_path": e.local_path, "digest": e.digest, "size": e.size}
                      for e in art.manifest.contents},
        })
    return artifacts


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


# -- `text2sql sync DIR`: upload every offline run under a run or multirun dir ---------------------------------
def offline_runs(root: str | Path) -> list[Path]:
    """Every offline W&B run dir under `root` (`<job>/wandb/offline-run-*`), in path order."""
    root = Path(root)
    if root.name.startswith("offline-run-") and root.is_dir():
        return [root]
    return sorted(p for p in root.rglob("offline-run-*") if p.is_dir() and p.parent.name == "wandb")


def is_synced(run_dir: Path) -> bool:
    """`wandb sync` leaves `run-<id>.wandb.synced` beside the run file once uploaded."""
    return any(run_dir.glob("run-*.wandb.synced"))


def sync_command(run_dirs: list[Path], entity: str | None = None, project: str | None = None) -> list[str]:
    import shutil

    exe = shutil.which("wandb") or str(Path(sys.executable).with_name("wandb"))
    cmd = [exe, "sync"]
    if entity:
        cmd += ["--entity", entity]
    if project:
        cmd += ["--project", project]
    return cmd + [str(d) for d in run_dirs]


def add_arguments(parser) -> None:
    parser.add_argument("dir", type=Path, help="a run dir (outputs/DATE/TIME) or a multirun dir (multirun/DATE/TIME)")
    parser.add_argument("--entity", default=None, help="upload to this W&B entity (default: your default entity)")
    parser.add_argument("--project", default=None, help="upload to this project (default: the one each run logged)")
    parser.add_argument("--include-synced", action="store_true", help="upload runs already synced again")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and the wandb command, upload nothing")


def run(args) -> int:
    import subprocess

    if not args.dir.exists():
        raise FileNotFoundError(f"no such dir: {args.dir}")
    found = offline_runs(args.dir)
    if not found:
        raise ValueError(f"no offline W&B runs (*/wandb/offline-run-*) under {args.dir}")
    todo = [d for d in found if args.include_synced or not is_synced(d)]
    for d in found:
        print(f"{'sync' if d in todo else 'skip (already synced)'}: {d}")
    if not todo:
        print("nothing to sync")
        return 0
    cmd = sync_command(todo, args.entity, args.project)
    if args.include_synced:
        cmd.insert(2, "--include-synced")
    if args.dry_run:  # wandb's own dry run: checks the runs and flags, needs no network or login
        print("would run: " + " ".join(cmd), flush=True)
        cmd.insert(2, "--dry-run")
    else:
        print("running: " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode
