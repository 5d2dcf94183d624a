"""Reading wandb's offline run files (`run-*.wandb`) with wandb's own protobuf records.

The file is a 7-byte header (`:W&B`, magic, version) followed by LevelDB log records in 32 KiB blocks (crc32, length,
type: full, first, middle, last), each payload a serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[object]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        payload = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record
            pending = b""


def read_run(path: str | Path) -> dict:
    """The run's name, group, job type, history rows and summary as plain values."""
    out: dict = {"history": [], "summary": {}}
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(
                name=r.run.display_name, group=r.run.run_group, job_type=r.run.job_type, project=r.run.project
            )
        elif kind == "history":
            row = {}
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            out["history"].append(row)
        elif kind == "summary":
            for item in r.summary.update:
                key = item.key or "/".join(item.nested_key)
                out["summary"][key] = json.loads(item.value_json)
    return out


def offline_runs(root: str | Path) -> dict[str, dict]:
    """Every offline run under `root/wandb/`, by run name. wandb's service writes the files: it is shut down
    first (in this process; a training worker's ended with the worker) so that every record has reached them."""
    import sys

    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()
    runs = {}
    for path in sorted(Path(root).glob("wandb/offline-run-*/run-*.wandb")):
        run = read_run(path)
        runs[run["name"]] = run
    return runs
