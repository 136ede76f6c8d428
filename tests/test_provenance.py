"""engine.provenance: content hashes of files and folders, portable paths, and the check that
names a missing or changed input with the expected and found hashes."""

from __future__ import annotations

import hashlib

import pytest

from engine.provenance import (
    ProvenanceError,
    check_inputs,
    file_digest,
    input_record,
    portable_path,
    resolve_path,
)


def test_provenance_file_digest_is_sha256_of_the_bytes_and_follows_changes(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"hello")
    assert file_digest(f) == "sha256:" + hashlib.sha256(b"hello").hexdigest()
    f.write_bytes(b"hellp!")  # another size: the memo does not answer for it
    assert file_digest(f) == "sha256:" + hashlib.sha256(b"hellp!").hexdigest()


def test_provenance_folder_digest_covers_names_and_contents(tmp_path):
    d = tmp_path / "sae"
    (d / "sub").mkdir(parents=True)
    (d / "cfg.json").write_text("{}")
    (d / "sub" / "w.bin").write_bytes(b"\x00\x01")
    first = file_digest(d)
    (d / "sub" / "w.bin").rename(d / "sub" / "v.bin")
    assert file_digest(d) != first


def test_provenance_paths_inside_the_workspace_travel_with_it(tmp_path):
    root = tmp_path / "ws"
    (root / "stores").mkdir(parents=True)
    assert portable_path(root / "stores" / "a.h5", root) == "./stores/a.h5"
    assert portable_path(tmp_path / "elsewhere.h5", root) == str(tmp_path / "elsewhere.h5")
    assert resolve_path("./stores/a.h5", tmp_path / "copy") == tmp_path / "copy" / "stores" / "a.h5"


def test_provenance_check_names_a_changed_or_missing_input(tmp_path):
    store = tmp_path / "s.h5"
    store.write_bytes(b"x" * 100)
    rec = [input_record(store, "store", tmp_path)]
    check_inputs(rec, tmp_path)
    store.write_bytes(b"x" * 99 + b"y")
    with pytest.raises(ProvenanceError, match=r"store .*s\.h5: changed \(expected sha256:[0-9a-f]{64}, found sha256:"):
        check_inputs(rec, tmp_path)
    store.unlink()
    with pytest.raises(ProvenanceError, match="s.h5: missing"):
        check_inputs(rec, tmp_path)
