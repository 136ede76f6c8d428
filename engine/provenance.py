"""Where a result came from: the content hashes of its input files, and checks that a file
named in a record (a figure's, a session's) is still the file it was.

A file is hashed whole (SHA-256, streamed); a folder (an SAE, a model) as the sorted list
of its files' relative names and hashes. Hashes are memoised per path, size and mtime, so
asking again for an unchanged store costs a ``stat``."""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import re
from collections.abc import Iterable, Mapping
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


# ---------------------------------------------------------------------- whole records
RECORD_FORMAT = 1  # the layout of a provenance record
RECORD_KEYS = ("format", "kind", "inputs", "model", "sae", "params", "seed", "latentlab", "created")


def latentlab_version() -> str:
    """The installed LatentLab version (pyproject's when run from a checkout not installed)."""
    try:
        return importlib.metadata.version("latentlab")
    except importlib.metadata.PackageNotFoundError:
        pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.M) if pyproject.is_file() else None
        return found.group(1) if found else "unknown"


def sae_identity(folder: str | os.PathLike | None, sae_id: str | None = None) -> dict[str, Any] | None:
    """An SAE's id (its folder name unless given) and the hash of its folder (weights and cfg)."""
    if folder is None:
        return None
    folder = Path(folder)
    return {"id": sae_id or folder.name, "sha256": file_digest(folder) if folder.exists() else None}


def provenance_record(kind: str, *, inputs: Iterable[tuple[str, str | os.PathLike]] = (),
                      model_id: str | None = None, model_hash: str | None = None,
                      sae: str | os.PathLike | None = None, sae_id: str | None = None,
                      params: Mapping[str, Any] | None = None, seed: int | None = None,
                      root: str | os.PathLike | None = None) -> dict[str, Any]:
    """Where a result of ``kind`` (store, sae, statistics, projection, comparison, sweep,
    injection, figure) came from: its input files (``(role, path)``) with content hashes, the
    model's id and weight hash, the SAE's id and hash, its parameters, LatentLab's version,
    the seed and the time (UTC, ISO 8601). JSON-able; paths inside ``root`` are relative."""
    return {
        "format": RECORD_FORMAT, "kind": kind,
        "inputs": [input_record(path, role, root) for role, path in inputs],
        "model": None if model_id is None and model_hash is None else {"id": model_id, "sha256": model_hash},
        "sae": sae_identity(sae, sae_id),
        "params": _jsonable(dict(params or {})), "seed": seed, "latentlab": latentlab_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def known_record(kind: str, found: Mapping[str, Any] | None = None, **known: Any) -> dict[str, Any]:
    """The record of a result written before records existed: ``found`` when it holds one,
    else a record of what is known (the other fields None) marked ``"recorded": false``."""
    if found:
        return dict(found)
    blank = {key: ([] if key == "inputs" else None) for key in RECORD_KEYS}
    return {**blank, **_jsonable(known), "format": RECORD_FORMAT, "kind": kind, "recorded": False}


def record_json(record: Mapping[str, Any]) -> str:
    """A record as compact JSON (an HDF5 attribute, a PNG text chunk)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"))


def describe_record(record: Mapping[str, Any] | None) -> str:
    """A record as readable lines (the GUI's Provenance window)."""
    if not record:
        return "No provenance record: this result was made before LatentLab kept them."
    lines = [f"{record.get('kind', 'result')}: made {record.get('created') or 'at an unknown time'} "
             f"by LatentLab {record.get('latentlab') or '(version unknown)'}"]
    if record.get("recorded") is False:
        lines.append("(written before records were kept: only what the file says is shown)")
    for item in record.get("inputs") or []:
        lines.append(f"input {item.get('role')}: {item.get('path')}  {item.get('sha256')}")
    for key in ("model", "sae"):
        part = record.get(key)
        if part:
            lines.append(f"{key}: {part.get('id')}  {part.get('sha256') or '(hash unknown)'}")
    if record.get("seed") is not None:
        lines.append(f"seed: {record['seed']}")
    for key, value in sorted((record.get("params") or {}).items()):
        lines.append(f"{key}: {json.dumps(value) if isinstance(value, dict | list) else value}")
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """``value`` with paths as strings, tuples as lists and numpy scalars as numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def array_digest(array: Any) -> str:
    """``sha256:<hex>`` of an array's float32 bytes (a steering direction, a probe's weights)."""
    import numpy as np
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(np.asarray(array, np.float32)).tobytes()).hexdigest()
