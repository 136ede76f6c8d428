"""Where a result came from: the content hashes of its input files, and checks that a file
named in a record (a figure's, a session's) is still the file it was.

A file is hashed whole (SHA-256, streamed); a folder (an SAE, a model) as the sorted list
of its files' relative names and hashes. Hashes are memoised per path, size and mtime, so
asking again for an unchanged store costs a ``stat``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from engine.errors import LatentLabError

_CHUNK = 8 << 20
_memo: dict[tuple[str, int, int], str] = {}


class ProvenanceError(LatentLabError):
    """An input a record names is missing or is no longer the file it was."""


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's files (names and hashes, sorted)."""
    path = Path(path)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(path).as_posix()}\0{file_digest(f)}\n".encode())
        return "sha256:" + h.hexdigest()
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _memo:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        _memo[key] = "sha256:" + h.hexdigest()
    return _memo[key]


def portable_path(path: str | os.PathLike, root: str | os.PathLike | None) -> str:
    """``path`` relative to ``root`` (as ``./x/y``) when it lies inside it, else absolute:
    what a record stores, so a workspace folder copied elsewhere still resolves."""
    path = Path(os.path.normpath(Path(path).expanduser().absolute()))
    if root is not None:
        base = Path(os.path.normpath(Path(root).expanduser().absolute()))
        if path == base or base in path.parents:
            return "./" + path.relative_to(base).as_posix()
    return str(path)


def resolve_path(stored: str, root: str | os.PathLike | None) -> Path:
    """The file a record's ``path`` names: ``./x`` relative to ``root``, else as written."""
    if stored.startswith("./") and root is not None:
        return Path(root) / stored[2:]
    return Path(stored)


def input_record(path: str | os.PathLike, role: str, root: str | os.PathLike | None = None) -> dict[str, Any]:
    """One input of a result: its role (``store``, ``sae``...), portable path and hash."""
    return {"role": role, "path": portable_path(path, root), "sha256": file_digest(path)}


def input_problems(inputs: list[dict[str, Any]], root: str | os.PathLike | None = None) -> list[str]:
    """A sentence per input that is missing or changed (naming the file and the expected
    and found hashes); empty when every input is the file it was."""
    problems = []
    for item in inputs:
        path = resolve_path(item["path"], root)
        if not path.exists():
            problems.append(f"{item['role']} {path}: missing (expected {item['sha256']})")
            continue
        found = file_digest(path)
        if found != item["sha256"]:
            problems.append(f"{item['role']} {path}: changed (expected {item['sha256']}, found {found})")
    return problems


def check_inputs(inputs: list[dict[str, Any]], root: str | os.PathLike | None = None) -> None:
    """Raise ProvenanceError naming every missing or changed input, before anything runs."""
    problems = input_problems(inputs, root)
    if problems:
        raise ProvenanceError("; ".join(problems))
