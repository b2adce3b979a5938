"""Read an offline W&B run (`run-<id>.wandb`) back without a server: its history rows and summary.

Useful to check what a run logged before (or without) `wandb sync`, and for tests that prove a metric
really reached W&B. The file is a LevelDB-style log of protobuf `Record`s after a 7-byte W&B header.
"""

from __future__ import annotations

import json
import struct
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
    """The `.wandb` file of an offline run dir (or of the newest run under a `wandb/` dir)."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb")) or sorted(run_dir.glob("*run-*/run-*.wandb"))
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
