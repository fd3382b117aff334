"""Read back what an offline W&B run wrote: its `.wandb` file, a LevelDB-style log of protobuf records (wandb 0.2x+
writes no wandb-summary.json or config.yaml offline; those come from the server after `wandb sync`)."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768  # LevelDB log blocks; each record: crc32 (4 bytes), length (2), type (1: full, 2: first, 3, 4: last)
FILE_HEADER = 7  # ":W&B", magic 0xBEE1, version


@dataclass
class OfflineRun:
    folder: Path
    run_id: str = ""
    name: str = ""
    project: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # saved with run.save (their copies are in folder/files/)
    tags: list[str] = field(default_factory=list)
    exited: bool = False


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if not data:  # not written yet
        return
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, parts = FILE_HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:  # zeros: padding up to the block's end (or the end of what was written)
            pos += left
            continue
        if pos + 7 + length > len(data):  # a record still being written
            return
        parts += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def _key(item: Any) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def read_offline_run(folder: Path) -> OfflineRun:
    """One offline-run-* folder: its run record, config, summary (the last value of each key), history and files."""
    [log] = folder.glob("run-*.wandb")
    run = OfflineRun(folder)
    for record in records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.name, run.project = record.run.run_id, record.run.display_name, record.run.project
            run.tags = list(record.run.tags)
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "files":
            run.files += [f.path for f in record.files.files]
        elif kind == "exit":
            run.exited = True
    return run


def offline_runs(run_dir: Path, timeout: float = 30) -> list[OfflineRun]:
    """The offline W&B runs of a run directory (run_dir/wandb/offline-run-*), oldest first. wandb-core writes the
    `.wandb` file in its own process: `run.finish()` can return before the last records (up to the exit record) are
    written, so a run read at once is read again until it shows its exit, for up to `timeout` seconds."""
    runs = []
    for folder in sorted((run_dir / "wandb").glob("offline-run-*")):
        deadline = time.monotonic() + timeout
        run = read_offline_run(folder)
        while not run.exited and time.monotonic() < deadline:
            time.sleep(0.2)
            run = read_offline_run(folder)
        runs.append(run)
    return runs
