"""Append-only generation cache, so an interrupted ``lasa eval`` resumes without redoing work.

One JSON object per line, keyed by a sha256 of (model identity, vector identity, the prompt
text, steered or not, decoding and steering settings). Each finished batch is appended and
flushed at once; a line cut short by a crash is ignored on the next load. Judgements are
not cached (they are cheap, and changing the judge must not need new generations).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch


def digest(*parts: Any) -> str:
    """sha256 of a JSON rendering of ``parts`` (dicts with sorted keys)."""
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def tensor_digest(tensors: dict[str, torch.Tensor], meta: Any = None) -> str:
    """sha256 over named tensors (their float32 bytes) and optional metadata."""
    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class GenerationCache:
    """``key -> record`` backed by an append-only JSONL file."""

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.skipped_lines = 0
        if self.path.is_file():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        rec = json.loads(line)
                        self.records[rec["key"]] = rec
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped_lines += 1  # a write cut short by an interruption

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.records.get(key)

    def add_many(self, records: Iterable[dict[str, Any]]) -> None:
        """Append records (each with a ``key``) and flush them to disk."""
        recs = list(records)
        if not recs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            if fh.tell() > 0 and not self._ends_with_newline():
                fh.write("\n")  # never glue a record onto a half-written line
            for rec in recs:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        for rec in recs:
            self.records[rec["key"]] = rec

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) == b"\n"
