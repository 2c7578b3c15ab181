"""Files that survive a crash: atomic rewrites and JSON lines that a torn write cannot corrupt.

Every record a run keeps (run config, checkpoint markers, audit trail, heatmap and skill-signal
records) goes through these helpers, so that a process killed mid-write leaves the previous file or
a torn last line that readers skip, never a half-written file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def parse_jsonl(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """The (line, record) pairs of a JSONL file and how many lines are not a record: a process
    killed in the middle of a write leaves its last line cut short."""
    parsed, torn = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if isinstance(record, dict):
            parsed.append((line, record))
        else:
            torn += 1
    return parsed, torn


def ends_with_newline(path: Path) -> bool:
    """Whether the next append starts a line of its own (a write cut just before its newline
    would glue the next record onto the last one)."""
    with path.open("rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` through a temporary file and a rename, so that a crash during
    the write leaves the old file (or none), never half of the new one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rewrite_jsonl(path: Path, lines: list[str]) -> None:
    """Replace ``path`` by ``lines`` atomically (`write_text_atomic`)."""
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def append_jsonl(path: Path, records: Iterable[Mapping[str, Any]]) -> None:
    """Append one JSON line per record, ASCII-escaped (any string, lone surrogates included,
    round-trips), creating the folder if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=True) + "\n")
