"""What every benchmark's JSON output carries besides its figures: date, machine, command (for bench/README.md)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    """Cores and CPU model of this machine (Linux /proc/cpuinfo, else platform's guess)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": cores, "cpu": model, "python": platform.python_version()}


def write_json(path: str | Path, record: dict) -> Path:
    """Write `record` plus date/machine/command (unless given) as indented JSON; returns the path."""
    out = {"date": time.strftime("%Y-%m-%d"), "machine": machine(),
           "command": "python " + " ".join([os.path.relpath(sys.argv[0]), *sys.argv[1:]]), **record}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return path
