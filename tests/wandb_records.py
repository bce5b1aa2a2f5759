"""Read the records of an offline W&B run (``run-<id>.wandb``) with W&B's own protobufs.

The file is W&B's 7-byte header followed by a LevelDB log: 32 KiB blocks of chunks, each
with a 7-byte header (CRC32C, length, type) and a piece of one serialized ``Record``.
wandb no longer ships a Python reader for it, so the tests carry this small one.
"""

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto.wandb_internal_pb2 import Record

FILE_HEADER = struct.Struct("<4sHB")  # b":W&B", magic 0xBEE1, version
CHUNK_HEADER = struct.Struct("<IHB")  # masked CRC32C, length, type
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> Iterator[Record]:
    data = path.read_bytes()
    ident, magic, _ = FILE_HEADER.unpack_from(data)
    assert (ident, magic) == (b":W&B", 0xBEE1), f"{path} is not a W&B run file"
    pos, pieces = FILE_HEADER.size, []
    while pos + CHUNK_HEADER.size <= len(data):
        if BLOCK - pos % BLOCK < CHUNK_HEADER.size:  # a block's tail too short for a header
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, pos)
        start = pos + CHUNK_HEADER.size
        pos = start + length
        if kind == 0:  # zero padding at the end of a block
            continue
        pieces = [data[start:pos]] if kind in (FULL, FIRST) else [*pieces, data[start:pos]]
        if kind in (FULL, LAST):
            record = Record()
            record.ParseFromString(b"".join(pieces))
            yield record
    assert pos == len(data), f"{path}: {len(data) - pos} trailing bytes"


def finished_records(path: Path, timeout: float = 60.0) -> list[Record]:
    """The run's records once W&B has written its exit record: on a loaded machine
    ``wandb.finish()`` can return before W&B's service has written the last records."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            records = list(read_records(path))
        except AssertionError:  # a record still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, f"{path}: no exit record after {timeout} s"
        time.sleep(0.5)


def logged_history(path: Path) -> dict[str, list[Any]]:
    """Every value logged under each key, in logging order."""
    history: dict[str, list[Any]] = {}
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                history.setdefault(key, []).append(json.loads(item.value_json))
    return history


def logged_config(path: Path) -> dict[str, Any]:
    """The run's config as W&B recorded it (the last value of each top-level key)."""
    config: dict[str, Any] = {}
    for record in finished_records(path):
        if record.WhichOneof("record_type") == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return config
