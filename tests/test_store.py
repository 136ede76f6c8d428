"""HDF5 activation stores (engine/store/activations.py) through their public behaviour: real files in
tmp_path, no mocks. Round trips, SWMR readers, append errors, streaming batches, token
contexts, validation messages, crash recovery of a killed writer and joined shards."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.errors import StoreError
from engine.store.activations import (
    FORMAT_VERSION,
    ActivationStore,
    StoreMeta,
    recover,
    validate,
)
from engine.store.shards import join_shards

ROOT = Path(__file__).resolve().parents[1]

HOOKS = ("blocks.0.out", "blocks.1.out")
DIMS = {"blocks.0.out": 8, "blocks.1.out": 5}
DOC_LEN = 10


def make_meta(dtype: str = "float32", hooks=HOOKS, dims=None, **params) -> StoreMeta:
    return StoreMeta(model_id="tiny-llama", model_hash="abc123", source_id="demo",
                     hooks=tuple(hooks), dims=dict(dims or DIMS), dtype=dtype,
                     params=params or {"layer_norm": False})


def make_data(n: int, dtype: str = "float32", dims=None, seed: int = 0) -> dict:
    """Full expected columns for ``n`` rows: random activations (already in the store's
    dtype, so comparisons are exact), tokens, documents of DOC_LEN rows and a label."""
    rng = np.random.default_rng(seed)
    r = np.arange(n)
    acts = {h: rng.standard_normal((n, d)).astype(dtype) for h, d in (dims or DIMS).items()}
    return {"acts": acts, "tokens": (1000 + 7 * r).astype(np.int32),
            "sample": (r // DOC_LEN).astype(np.int32), "position": (r % DOC_LEN).astype(np.int32),
            "labels": {"cls": (r % 3).astype(np.int32)}}


def rows_of(data: dict, lo: int, hi: int) -> dict:
    """The keyword arguments of ``append`` for rows lo:hi of ``data``."""
    return {"acts": {h: a[lo:hi] for h, a in data["acts"].items()},
            "tokens": data["tokens"][lo:hi], "sample": data["sample"][lo:hi],
            "position": data["position"][lo:hi],
            "labels": {k: v[lo:hi] for k, v in data["labels"].items()}}


def documents(n_docs: int) -> list[str]:
    return [f"document {i}: naïve café ✓ " + "word " * (i % 4) for i in range(n_docs)]


def build_store(path: Path, n: int = 250, dtype: str = "float32", splits=(0, 40, 41, 170),
                seed: int = 0) -> dict:
    """Write a closed store of ``n`` rows in several appends; return the expected data."""
    data = make_data(n, dtype, seed=seed)
    with ActivationStore.create(path, make_meta(dtype), labels=["cls"]) as s:
        bounds = [*splits, n]
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            s.append(**rows_of(data, lo, hi))
        s.put_documents(0, documents(-(-n // DOC_LEN)))
    return data


def wide_store(path: Path, n: int = 1000, d: int = 1024) -> np.ndarray:
    """A float32 store of one hook whose rows fill several HDF5 chunks (256 rows each at
    d=1024); column 0 of each row holds its row index so rows can be traced."""
    rng = np.random.default_rng(1)
    acts = rng.standard_normal((n, d)).astype(np.float32)
    acts[:, 0] = np.arange(n)
    r = np.arange(n, dtype=np.int32)
    meta = make_meta("float32", hooks=("h",), dims={"h": d})
    with ActivationStore.create(path, meta) as s:
        for lo in range(0, n, 300):
            hi = min(n, lo + 300)
            s.append({"h": acts[lo:hi]}, r[lo:hi], r[lo:hi] // 50, r[lo:hi] % 50)
    return acts


def sorted_by_first_column(a: np.ndarray) -> np.ndarray:
    return a[np.argsort(a[:, 0], kind="stable")]


# ---------------------------------------------------------------------- round trip
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_reads_back_every_value(tmp_path, dtype):
    path = tmp_path / "store.h5"
    data = build_store(path, 250, dtype)
    with ActivationStore.open(path) as s:
        assert s.n_rows == len(s) == 250
        assert int(s.attrs["n_committed"]) == 250
        assert int(s.attrs["format_version"]) == FORMAT_VERSION
        assert not s.writable
        assert s.hooks == HOOKS
        assert s.meta == make_meta(dtype)
        assert s.label_names == ["cls"]
        assert s.n_documents == 25
        for hook in HOOKS:
            assert s.dim(hook) == DIMS[hook]
            got = s.acts(hook)
            assert got.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(got, data["acts"][hook])
            np.testing.assert_array_equal(s.acts(hook, 37, 141), data["acts"][hook][37:141])
            index = np.array([5, 0, 5, 249, 3, 120, 0, 41])
            np.testing.assert_array_equal(s.rows(hook, index), data["acts"][hook][index])
            assert s.rows(hook, np.array([], dtype=np.int64)).shape == (0, DIMS[hook])
        for name in ("tokens", "sample", "position"):
            np.testing.assert_array_equal(s.index(name), data[name])
            np.testing.assert_array_equal(s.index(name, 10, 20), data[name][10:20])
        np.testing.assert_array_equal(s.index("cls"), data["labels"]["cls"])
        for sample, text in enumerate(documents(25)):
            assert s.document(sample) == text
        # a row leads back to its document
        assert s.document(int(s.index("sample", 137, 138)[0])) == documents(25)[13]


def test_reads_refuse_bad_hooks_rows_and_index_names(tmp_path):
    path = tmp_path / "store.h5"
    build_store(path, 50)
    with ActivationStore.open(path) as s:
        with pytest.raises(StoreError, match="no hook point 'nope'"):
            s.acts("nope")
        with pytest.raises(IndexError):
            s.rows(HOOKS[0], np.array([0, 50]))
        with pytest.raises(IndexError):
            s.rows(HOOKS[0], np.array([-1]))
        with pytest.raises(StoreError, match="labels/nope"):
            s.index("nope")
        assert s.acts(HOOKS[0], 40, 1000).shape == (10, DIMS[HOOKS[0]])
        assert s.acts(HOOKS[0], 60).shape == (0, DIMS[HOOKS[0]])


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_acts_are_chunked_along_rows(tmp_path, dtype):
    path = tmp_path / "store.h5"
    build_store(path, 30, dtype)
    with h5py.File(path, "r") as f:
        for hook, d in DIMS.items():
            ds = f[f"acts/{hook}"]
            assert ds.dtype == np.dtype(dtype)
            assert ds.shape == (30, d)
            assert ds.maxshape == (None, d)
            rows, width = ds.chunks
            assert width == d
            assert rows >= 1 and rows & (rows - 1) == 0, rows
        for name in ("tokens", "sample", "position", "labels/cls"):
            assert f[name].dtype == np.int32
            assert f[name].shape == (30,)


def test_summary_describes_the_store(tmp_path):
    path = tmp_path / "store.h5"
    build_store(path, 120, "float16")
    with ActivationStore.open(path) as s:
        summary = s.summary()
    json.dumps(summary)  # JSON-able
    assert summary == {
        "path": str(path), "format_version": FORMAT_VERSION, "model_id": "tiny-llama",
        "model_hash": "abc123", "model_dtype": "float32", "source_id": "demo", "hooks": list(HOOKS), "dims": DIMS,
        "dtype": "float16", "rows": 120, "documents": 12, "labels": ["cls"],
        "params": {"layer_norm": False}}


def test_empty_store_reads_as_zero_rows(tmp_path):
    path = tmp_path / "empty.h5"
    ActivationStore.create(path, make_meta()).close()
    validate(path)
    with ActivationStore.open(path) as s:
        assert s.n_rows == 0
        assert s.label_names == []
        assert s.acts(HOOKS[0]).shape == (0, DIMS[HOOKS[0]])
        assert list(s.iter_batches(HOOKS[0], 4)) == []
        with pytest.raises(IndexError):
            s.context(0)


@pytest.mark.parametrize("dtype", ["float64", "int8", "bfloat16"])
def test_create_refuses_other_dtypes(tmp_path, dtype):
    path = tmp_path / "store.h5"
    with pytest.raises(StoreError, match=dtype) as info:
        ActivationStore.create(path, make_meta(dtype))
    assert str(path) in str(info.value)
    assert not path.exists()


# ---------------------------------------------------------------------- SWMR
def test_swmr_reader_follows_a_live_writer(tmp_path):
    path = tmp_path / "live.h5"
    data = make_data(300)
    writer = ActivationStore.create(path, make_meta(), labels=["cls"])
    try:
        writer.append(**rows_of(data, 0, 100))
        with ActivationStore.open(path) as reader:
            assert reader.n_rows == 100
            np.testing.assert_array_equal(reader.acts(HOOKS[0]), data["acts"][HOOKS[0]][:100])
            writer.append(**rows_of(data, 100, 230))
            # until it refreshes, the reader keeps to the rows it knows are committed
            assert reader.n_rows == 100
            assert reader.acts(HOOKS[1]).shape == (100, DIMS[HOOKS[1]])
            assert reader.acts(HOOKS[1], 50, 10_000).shape == (50, DIMS[HOOKS[1]])
            assert sum(len(b) for b in reader.iter_batches(HOOKS[0], 16)) == 100
            with pytest.raises(IndexError):
                reader.rows(HOOKS[0], np.array([150]))
            with pytest.raises(IndexError):
                reader.context(150)
            assert reader.refresh() == 230
            assert reader.n_rows == 230
            for hook in HOOKS:
                np.testing.assert_array_equal(reader.acts(hook), data["acts"][hook][:230])
                np.testing.assert_array_equal(reader.rows(hook, np.array([229, 100, 0])),
                                              data["acts"][hook][[229, 100, 0]])
            np.testing.assert_array_equal(reader.index("tokens"), data["tokens"][:230])
            np.testing.assert_array_equal(reader.index("cls"), data["labels"]["cls"][:230])
            writer.append(**rows_of(data, 230, 300))
            assert reader.refresh() == 300
            np.testing.assert_array_equal(reader.acts(HOOKS[0], 230), data["acts"][HOOKS[0]][230:])
    finally:
        writer.close()


STEPPER = """
import sys
import numpy as np
from engine.store.activations import ActivationStore, StoreMeta
path, d = sys.argv[1], 4
s = ActivationStore.create(path, StoreMeta("m", "h", "s", ("h",), {"h": d}, "float32", {}))
def rows(lo, hi):
    r = np.arange(lo, hi)
    return ({"h": np.repeat(r[:, None], d, axis=1).astype(np.float32)}, r.astype(np.int32),
            (r // 10).astype(np.int32), (r % 10).astype(np.int32))
s.append(*rows(0, 100))
print(s.n_rows, flush=True)
for line in sys.stdin:
    if line.strip() == "partial":  # rows on disk but not committed: a writer mid-append
        f, lo = s._f, s.n_rows
        for name, value in zip(("acts/h", "tokens", "sample", "position"), rows(lo, lo + 50)):
            f[name].resize(lo + 50, axis=0)
            f[name][lo:] = value["h"] if isinstance(value, dict) else value
        f.flush()
        print(s.n_rows, flush=True)
    elif line.strip() == "append":
        print(s.append(*rows(s.n_rows, s.n_rows + 100)), flush=True)
    else:
        break
s.close()
"""


def expected_rows(n: int, d: int = 16) -> np.ndarray:
    return np.repeat(np.arange(n, dtype=np.float32)[:, None], d, axis=1)


def test_swmr_reader_in_another_process_sees_only_committed_rows(tmp_path):
    """The writer runs in its own process (in one process HDF5 shares one cache between
    writer and reader, which would hide what a real reader sees)."""
    path = tmp_path / "live.h5"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", STEPPER, str(path)], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def step(command: str) -> int:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
        return int(proc.stdout.readline())

    try:
        assert int(proc.stdout.readline()) == 100
        reader = ActivationStore.open(path)
        other = ActivationStore.open(path)  # a second reader of the same file
        try:
            assert reader.n_rows == 100
            np.testing.assert_array_equal(reader.acts("h"), expected_rows(100, 4))
            assert step("partial") == 100
            assert reader.refresh() == 100
            assert reader.acts("h").shape == (100, 4)
            assert reader.acts("h", 90, 10_000).shape == (10, 4)
            assert sum(len(b) for b in reader.iter_batches("h", 32)) == 100
            with pytest.raises(IndexError):
                reader.rows("h", np.array([120]))
            assert step("append") == 200
            assert reader.n_rows == 100  # until it refreshes
            assert reader.refresh() == 200
            np.testing.assert_array_equal(reader.acts("h"), expected_rows(200, 4))
            np.testing.assert_array_equal(reader.rows("h", np.array([199, 100, 150, 0])),
                                          expected_rows(200, 4)[[199, 100, 150, 0]])
            np.testing.assert_array_equal(reader.index("tokens"), np.arange(200))
            assert step("append") == 300
            assert other.refresh() == 300
            assert reader.refresh() == 300
            np.testing.assert_array_equal(other.acts("h", 200), expected_rows(300, 4)[200:])
            np.testing.assert_array_equal(reader.index("position"), np.arange(300) % 10)
            ctx, at = reader.context(255, before=3, after=2)
            assert list(ctx) == [252, 253, 254, 255, 256, 257] and at == 3
        finally:
            reader.close()
            other.close()
        proc.stdin.write("stop\n")
        proc.stdin.close()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        proc.stdout.close()
    with ActivationStore.open(path) as s:
        assert s.n_rows == 300
        np.testing.assert_array_equal(s.acts("h"), expected_rows(300, 4))


def test_refresh_of_a_reader_without_a_writer(tmp_path):
    path = tmp_path / "closed.h5"
    build_store(path, 30)
    with ActivationStore.open(path) as s:
        assert s.refresh() == 30
        assert s.n_rows == 30


def test_store_without_the_committed_dataset_still_works(tmp_path):
    """Stores written before /n_committed existed keep the count only in the attribute."""
    path = tmp_path / "old.h5"
    data = build_store(path, 60)
    with h5py.File(path, "r+") as f:
        del f["n_committed"]
        f["tokens"].resize(70, axis=0)  # uncommitted rows past the attribute's count
    validate(path)
    with ActivationStore.open(path) as s:
        assert s.n_rows == 60
        assert s.refresh() == 60
        np.testing.assert_array_equal(s.index("tokens"), data["tokens"][:60])
    more = make_data(80, seed=0)
    with ActivationStore.open_append(path) as s:
        assert s.n_rows == 60
        assert s.append(**rows_of(more, 60, 80)) == 80
    with ActivationStore.open(path) as s:
        assert s.n_rows == 80
        np.testing.assert_array_equal(s.acts(HOOKS[0]), more["acts"][HOOKS[0]])
        np.testing.assert_array_equal(s.index("tokens"), more["tokens"])


# ---------------------------------------------------------------------- append errors
def test_append_errors_leave_the_store_intact(tmp_path):
    path = tmp_path / "store.h5"
    data = make_data(60)
    with ActivationStore.create(path, make_meta(), labels=["cls"]) as s:
        s.append(**rows_of(data, 0, 20))
        good = rows_of(data, 20, 40)

        only_one = {**good, "acts": {HOOKS[0]: good["acts"][HOOKS[0]]}}
        with pytest.raises(StoreError, match="hooks") as info:
            s.append(**only_one)
        assert str(path) in str(info.value)

        extra = {**good, "acts": {**good["acts"], "blocks.9.out": good["acts"][HOOKS[0]]}}
        with pytest.raises(StoreError, match="blocks.9.out"):
            s.append(**extra)

        short = {**good, "position": good["position"][:-1]}
        with pytest.raises(StoreError, match="position"):
            s.append(**short)

        short_acts = {**good, "acts": {**good["acts"], HOOKS[1]: good["acts"][HOOKS[1]][:5]}}
        with pytest.raises(StoreError, match=HOOKS[1]):
            s.append(**short_acts)

        with pytest.raises(StoreError, match="labels/cls"):
            s.append(**{**good, "labels": {}})
        with pytest.raises(StoreError, match="labels/cls"):
            s.append(**{**good, "labels": None})
        with pytest.raises(StoreError, match="labels/other"):
            s.append(**{**good, "labels": {**good["labels"], "other": good["labels"]["cls"]}})

        wide = {**good, "acts": {**good["acts"], HOOKS[0]: np.zeros((20, 9), np.float32)}}
        with pytest.raises(StoreError, match=HOOKS[0]):
            s.append(**wide)

        assert s.n_rows == 20
        assert s.append(**good) == 40
        assert s.append(**rows_of(data, 40, 60)) == 60
    with ActivationStore.open(path) as s:
        assert s.n_rows == 60
        for hook in HOOKS:
            np.testing.assert_array_equal(s.acts(hook), data["acts"][hook])
        np.testing.assert_array_equal(s.index("cls"), data["labels"]["cls"])
        np.testing.assert_array_equal(s.index("position"), data["position"])


def test_read_only_store_refuses_writes(tmp_path):
    path = tmp_path / "store.h5"
    data = build_store(path, 30)
    with ActivationStore.open(path) as s:
        with pytest.raises(StoreError, match="read-only") as info:
            s.append(**rows_of(data, 0, 10))
        assert str(path) in str(info.value)
        with pytest.raises(StoreError, match="read-only"):
            s.put_documents(0, ["x"])
        with pytest.raises(StoreError, match="read-only"):
            s.set_attr("source_id", "other")
        assert s.n_rows == 30
    with ActivationStore.open(path) as s:
        assert s.n_rows == 30
        assert s.document(0) == documents(3)[0]
        assert s.meta.source_id == "demo"


def test_set_attr_updates_an_existing_attribute(tmp_path):
    path = tmp_path / "store.h5"
    build_store(path, 10)
    with ActivationStore.open_append(path) as s:
        s.set_attr("source_id", "renamed")
    with ActivationStore.open(path) as s:
        assert str(s.attrs["source_id"]) == "renamed"


# ---------------------------------------------------------------------- iter_batches
def test_shuffled_batches_cover_every_row_once_and_mix_chunks(tmp_path):
    path = tmp_path / "wide.h5"
    acts = wide_store(path)
    with h5py.File(path, "r") as f:
        chunk = f["acts/h"].chunks[0]
    assert 1000 // chunk >= 3  # several chunks, or the mixing check means nothing
    with ActivationStore.open(path) as s:
        batches = list(s.iter_batches("h", 64, seed=3))
        assert all(b.dtype == np.float32 for b in batches)
        assert all(len(b) == 64 for b in batches[:-1])
        assert len(batches[-1]) == 1000 - 15 * 64
        seen = np.concatenate(batches)
        assert seen.shape == acts.shape
        np.testing.assert_array_equal(np.sort(seen[:, 0]), np.arange(1000))
        np.testing.assert_array_equal(sorted_by_first_column(seen), acts)
        assert not np.array_equal(seen[:, 0], np.arange(1000))
        first_chunks = np.unique(batches[0][:, 0].astype(int) // chunk)
        assert len(first_chunks) > 1, first_chunks

        again = np.concatenate(list(s.iter_batches("h", 64, seed=3)))
        np.testing.assert_array_equal(again, seen)
        other = np.concatenate(list(s.iter_batches("h", 64, seed=4)))
        assert not np.array_equal(other[:, 0], seen[:, 0])
        np.testing.assert_array_equal(sorted_by_first_column(other), acts)

        # a small buffer still visits every row exactly once
        small = np.concatenate(list(s.iter_batches("h", 50, seed=1, buffer_rows=300)))
        np.testing.assert_array_equal(sorted_by_first_column(small), acts)


def test_sequential_batches_keep_row_order(tmp_path):
    path = tmp_path / "wide.h5"
    acts = wide_store(path)
    with ActivationStore.open(path) as s:
        batches = list(s.iter_batches("h", 100, shuffle=False))
        assert [len(b) for b in batches] == [100] * 10
        np.testing.assert_array_equal(np.concatenate(batches), acts)
        odd = list(s.iter_batches("h", 333, shuffle=False))
        assert [len(b) for b in odd] == [333, 333, 333, 1]
        np.testing.assert_array_equal(np.concatenate(odd), acts)


@pytest.mark.parametrize("shuffle", [True, False])
def test_batches_restricted_to_a_row_range(tmp_path, shuffle):
    path = tmp_path / "wide.h5"
    acts = wide_store(path)
    with ActivationStore.open(path) as s:
        held_out = np.concatenate(list(s.iter_batches("h", 64, shuffle=shuffle, start=300,
                                                      stop=900)))
        train = np.concatenate(list(s.iter_batches("h", 64, shuffle=shuffle, stop=300)))
        tail = np.concatenate(list(s.iter_batches("h", 64, shuffle=shuffle, start=900,
                                                  stop=5000)))
    if shuffle:
        held_out, train, tail = map(sorted_by_first_column, (held_out, train, tail))
    np.testing.assert_array_equal(held_out, acts[300:900])
    np.testing.assert_array_equal(train, acts[:300])
    np.testing.assert_array_equal(tail, acts[900:])


@pytest.mark.parametrize("shuffle", [True, False])
def test_drop_last_keeps_only_full_batches(tmp_path, shuffle):
    path = tmp_path / "wide.h5"
    acts = wide_store(path)
    with ActivationStore.open(path) as s:
        batches = list(s.iter_batches("h", 64, shuffle=shuffle, drop_last=True, start=0,
                                      stop=1000))
    assert len(batches) == 1000 // 64
    assert all(b.shape == (64, 1024) and b.dtype == np.float32 for b in batches)
    seen = np.concatenate(batches)[:, 0].astype(int)
    assert len(np.unique(seen)) == len(seen)
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(len(seen)))
    np.testing.assert_array_equal(np.concatenate(batches), acts[seen])


def test_float16_store_streams_float32_batches(tmp_path):
    path = tmp_path / "half.h5"
    data = build_store(path, 250, "float16")
    with ActivationStore.open(path) as s:
        for shuffle in (True, False):
            batches = list(s.iter_batches(HOOKS[1], 32, shuffle=shuffle, seed=9))
            assert all(b.dtype == np.float32 for b in batches)
            got = np.concatenate(batches)
            want = data["acts"][HOOKS[1]].astype(np.float32)
            if shuffle:
                order = np.lexsort(got.T[::-1])
                got, want = got[order], want[np.lexsort(want.T[::-1])]
            np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------- context
def context_store(path: Path, docs: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A store whose documents have the given lengths; token = 100 * sample + position."""
    sample = np.repeat(np.arange(len(docs)), docs).astype(np.int32)
    position = np.concatenate([np.arange(n) for n in docs]).astype(np.int32)
    tokens = (100 * sample + position).astype(np.int32)
    meta = make_meta(hooks=("h",), dims={"h": 2})
    with ActivationStore.create(path, meta) as s:
        s.append({"h": np.zeros((len(tokens), 2), np.float32)}, tokens, sample, position)
    return tokens, sample, position


def test_context_stays_inside_the_document(tmp_path):
    path = tmp_path / "ctx.h5"
    docs = [5, 1, 7, 3, 12]
    tokens, sample, position = context_store(path, docs)
    with ActivationStore.open(path) as s:
        for row in range(len(tokens)):
            for before, after in ((3, 2), (0, 0), (16, 8)):
                ctx, at = s.context(row, before=before, after=after)
                doc, pos = int(sample[row]), int(position[row])
                lo, hi = max(0, pos - before), min(docs[doc], pos + after + 1)
                np.testing.assert_array_equal(ctx, 100 * doc + np.arange(lo, hi))
                assert ctx[at] == tokens[row]
                assert at == pos - lo
        # document boundaries: the single-token document and first/last rows
        ctx, at = s.context(5)
        assert list(ctx) == [100] and at == 0
        ctx, at = s.context(0, before=4, after=2)
        assert list(ctx) == [0, 1, 2] and at == 0
        last = len(tokens) - 1
        ctx, at = s.context(last, before=2, after=5)
        assert list(ctx) == [409, 410, 411] and at == 2
        for bad in (-1, len(tokens), len(tokens) + 10):
            with pytest.raises(IndexError):
                s.context(bad)


def test_context_skips_rows_past_a_gap(tmp_path):
    """A document whose rows are interrupted by another document: the context stops at the
    interruption even where a later row's position happens to line up."""
    path = tmp_path / "gap.h5"
    sample = np.array([0, 0, 0, 1, 0, 0], np.int32)
    position = np.array([0, 1, 2, 0, 4, 5], np.int32)
    tokens = (100 * sample + position).astype(np.int32)
    with ActivationStore.create(path, make_meta(hooks=("h",), dims={"h": 2})) as s:
        s.append({"h": np.zeros((6, 2), np.float32)}, tokens, sample, position)
    with ActivationStore.open(path) as s:
        ctx, at = s.context(2, before=4, after=4)
        assert list(ctx) == [0, 1, 2] and at == 2
        ctx, at = s.context(4, before=4, after=4)
        assert list(ctx) == [4, 5] and at == 0
        ctx, at = s.context(3, before=4, after=4)
        assert list(ctx) == [100] and at == 0


# ---------------------------------------------------------------------- validation
def check_error(path: Path, *words: str) -> str:
    with pytest.raises(StoreError) as info:
        validate(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message, message
    with pytest.raises(StoreError):
        ActivationStore.open(path)
    return message


def test_validate_accepts_a_good_store(tmp_path):
    path = tmp_path / "good.h5"
    build_store(path, 40)
    validate(path)
    validate(str(path))


def test_validate_missing_file_and_folder(tmp_path):
    check_error(tmp_path / "nope.h5", "no such file")
    check_error(tmp_path, "folder")


def test_validate_plain_text_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("these are not activations\n" * 50)
    check_error(path, "not an HDF5 file")


def test_validate_truncated_store(tmp_path):
    good = tmp_path / "good.h5"
    build_store(good, 400)
    path = tmp_path / "cut.h5"
    shutil.copy(good, path)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    check_error(path, "truncated")


def test_validate_newer_format(tmp_path):
    path = tmp_path / "future.h5"
    build_store(path, 20)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    message = check_error(path, "newer")
    assert str(FORMAT_VERSION + 1) in message


def test_validate_missing_tokens(tmp_path):
    path = tmp_path / "notokens.h5"
    build_store(path, 20)
    with h5py.File(path, "r+") as f:
        del f["tokens"]
    check_error(path, "/tokens")


def test_validate_wrong_width(tmp_path):
    path = tmp_path / "wide.h5"
    build_store(path, 20)
    hook = HOOKS[1]
    with h5py.File(path, "r+") as f:
        del f[f"acts/{hook}"]
        f.create_dataset(f"acts/{hook}", data=np.zeros((20, DIMS[hook] + 1), np.float32))
    check_error(path, f"/acts/{hook}", str(DIMS[hook]))


def test_validate_missing_hook_dataset(tmp_path):
    path = tmp_path / "nohook.h5"
    build_store(path, 20)
    with h5py.File(path, "r+") as f:
        del f[f"acts/{HOOKS[0]}"]
    check_error(path, f"/acts/{HOOKS[0]}")


def test_validate_short_index_dataset(tmp_path):
    path = tmp_path / "short.h5"
    build_store(path, 20)
    with h5py.File(path, "r+") as f:
        f["position"].resize(10, axis=0)
    check_error(path, "/position")


def test_validate_foreign_hdf5_file(tmp_path):
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(10))
    check_error(path, "not a LatentLab")


def test_validate_missing_root_attribute(tmp_path):
    path = tmp_path / "noattr.h5"
    build_store(path, 20)
    with h5py.File(path, "r+") as f:
        del f.attrs["n_committed"]
    check_error(path, "n_committed")


# ---------------------------------------------------------------------- crash recovery
WRITER = """
import sys
import numpy as np
from engine.store.activations import ActivationStore, StoreMeta
path, d = sys.argv[1], 16
meta = StoreMeta("m", "h", "s", ("h",), {"h": d}, "float32", {})
s = ActivationStore.create(path, meta, labels=["cls"])
s.put_documents(0, ["first document"])
lo = 0
while True:
    r = np.arange(lo, lo + 100)
    s.append({"h": np.repeat(r[:, None], d, axis=1).astype(np.float32)},
             r.astype(np.int32), np.zeros(100, np.int32), r.astype(np.int32),
             {"cls": (r % 5).astype(np.int32)})
    lo += 100
"""


def wait_for_rows(path: Path, proc: subprocess.Popen, n: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    reader = None
    try:
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()
            if reader is None:
                try:
                    reader = ActivationStore.open(path)
                except StoreError:
                    time.sleep(0.02)
                    continue
            if reader.refresh() >= n:
                return reader.n_rows
            time.sleep(0.01)
    finally:
        if reader is not None:
            reader.close()
    raise AssertionError(f"writer never reached {n} committed rows")


def test_killed_writer_is_recovered(tmp_path):
    path = tmp_path / "crash.h5"
    lock = tmp_path / "crash.h5.lock"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_rows(path, proc, 500)
        assert lock.exists()
        assert lock.read_text().split() == [str(proc.pid), socket.gethostname()]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    with ActivationStore.open(path) as s:
        n = s.n_rows
        assert n >= 500 and n % 100 == 0
        # /n_committed is the count; the root attribute mirroring it is written just after,
        # so a kill between the two leaves the mirror one chunk behind until recovery
        assert int(s.attrs["n_committed"]) in (n - 100, n)
        np.testing.assert_array_equal(s.acts("h"), expected_rows(n))
        np.testing.assert_array_equal(s.index("position"), np.arange(n))
        assert s.document(0) == "first document"

    # HDF5 still marks the file as open for writing: plain h5py cannot write to it
    with pytest.raises(OSError):
        h5py.File(path, "r+")

    assert lock.exists()  # left behind by the killed writer, naming a dead process
    with ActivationStore.open_append(path) as s:
        assert s.writable
        assert s.n_rows == n
        np.testing.assert_array_equal(s.acts("h"), expected_rows(n))
        r = np.arange(n, n + 100)
        assert s.append({"h": np.repeat(r[:, None], 16, axis=1).astype(np.float32)},
                        r.astype(np.int32), np.zeros(100, np.int32), r.astype(np.int32),
                        {"cls": (r % 5).astype(np.int32)}) == n + 100
    assert not lock.exists()

    with h5py.File(path, "r+") as f:  # a clean file again
        assert int(f.attrs["n_committed"]) == n + 100
        for name in ("acts/h", "tokens", "sample", "position", "labels/cls"):
            assert f[name].shape[0] == n + 100, name
    with ActivationStore.open(path) as s:
        assert s.n_rows == n + 100
        np.testing.assert_array_equal(s.acts("h"), expected_rows(n + 100))
        np.testing.assert_array_equal(s.index("tokens"), np.arange(n + 100))
        np.testing.assert_array_equal(s.index("cls"), np.arange(n + 100) % 5)
        assert s.document(0) == "first document"
    assert not (tmp_path / "crash.h5.recovering").exists()


def test_open_append_refuses_a_store_a_live_process_writes(tmp_path):
    path = tmp_path / "busy.h5"
    build_store(path, 20)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lock = tmp_path / "busy.h5.lock"
        lock.write_text(f"{sleeper.pid} {socket.gethostname()}\n")
        with pytest.raises(StoreError, match="is being written by process") as info:
            ActivationStore.open_append(path)
        assert str(sleeper.pid) in str(info.value)
        assert str(path) in str(info.value)
    finally:
        sleeper.kill()
        sleeper.wait(timeout=10)
    # once that process is gone, the stale lock no longer blocks appending
    with ActivationStore.open_append(path) as s:
        assert s.n_rows == 20
    assert not lock.exists()


def test_open_append_continues_a_closed_store(tmp_path):
    path = tmp_path / "more.h5"
    data = make_data(90)
    with ActivationStore.create(path, make_meta(), labels=["cls"]) as s:
        s.append(**rows_of(data, 0, 50))
    with ActivationStore.open_append(path) as s:
        assert s.n_rows == 50
        assert s.append(**rows_of(data, 50, 90)) == 90
    with ActivationStore.open(path) as s:
        for hook in HOOKS:
            np.testing.assert_array_equal(s.acts(hook), data["acts"][hook])


def test_recover_keeps_a_healthy_store(tmp_path):
    path = tmp_path / "healthy.h5"
    data = build_store(path, 250, "float16")
    with ActivationStore.open(path) as s:
        before = s.summary()
        attrs = {k: s.attrs[k] for k in s.attrs}
    assert recover(path) == 250
    validate(path)
    with ActivationStore.open(path) as s:
        assert s.summary() == before
        assert {k: s.attrs[k] for k in s.attrs}.keys() == attrs.keys()
        for key, value in attrs.items():
            assert s.attrs[key] == value, key
        for hook in HOOKS:
            np.testing.assert_array_equal(s.acts(hook), data["acts"][hook])
        for name in ("tokens", "sample", "position"):
            np.testing.assert_array_equal(s.index(name), data[name])
        np.testing.assert_array_equal(s.index("cls"), data["labels"]["cls"])
        assert [s.document(i) for i in range(25)] == documents(25)
    with ActivationStore.open_append(path) as s:  # still appendable
        extra = make_data(10, "float16", seed=5)
        assert s.append(**rows_of(extra, 0, 10)) == 260


# ---------------------------------------------------------------------- meta identity
def test_meta_mismatch_names_the_differing_field():
    base = make_meta()
    assert base.mismatch(make_meta()) is None
    assert base.mismatch(replace(base, dims=dict(reversed(list(DIMS.items()))))) is None
    cases = {
        "model_id": replace(base, model_id="other-model"),
        "model_hash": replace(base, model_hash="fff"),
        "source_id": replace(base, source_id="wiki"),
        "dtype": replace(base, dtype="float16"),
        "hook points": replace(base, hooks=(HOOKS[0],)),
        "widths": replace(base, dims={**DIMS, HOOKS[1]: 6}),
        "capture setting layer_norm": replace(base, params={"layer_norm": True}),
        "capture setting max_tokens": replace(base, params={"layer_norm": False,
                                                            "max_tokens": 64}),
    }
    for field, other in cases.items():
        why = base.mismatch(other)
        assert why is not None and field in why, (field, why)
    assert "other-model" in base.mismatch(cases["model_id"])
    assert "6" in base.mismatch(cases["widths"])


# ---------------------------------------------------------------------- shards
def shard(path: Path, rank: int, lo: int, hi: int, data: dict) -> None:
    meta = replace(make_meta(), params={"layer_norm": False, "rank": rank})
    with ActivationStore.create(path, meta, labels=["cls"]) as s:
        s.append(**rows_of(data, lo, hi))
        first, last = int(data["sample"][lo]), int(data["sample"][hi - 1])
        s.put_documents(first, documents(last + 1)[first:])


def check_joined(path: Path, data: dict) -> None:
    with ActivationStore.open(path) as s:
        assert s.n_rows == 130
        for hook in HOOKS:
            np.testing.assert_array_equal(s.acts(hook), data["acts"][hook])
            np.testing.assert_array_equal(s.rows(hook, np.array([129, 0, 79, 80])),
                                          data["acts"][hook][[129, 0, 79, 80]])
        for name in ("tokens", "sample", "position"):
            np.testing.assert_array_equal(s.index(name), data[name])
        np.testing.assert_array_equal(s.index("cls"), data["labels"]["cls"])
        assert s.n_documents == 13
        assert [s.document(i) for i in range(13)] == documents(13)
        ctx, at = s.context(81, before=3, after=1)  # document 8 starts the second shard
        np.testing.assert_array_equal(ctx, data["tokens"][80:83])
        assert at == 1
        hook = HOOKS[0]
        ordered = np.concatenate(list(s.iter_batches(hook, 32, shuffle=False)))
        np.testing.assert_array_equal(ordered, data["acts"][hook])
        mixed = np.concatenate(list(s.iter_batches(hook, 32, seed=2, start=10, stop=120)))
        assert len(mixed) == 110
        np.testing.assert_array_equal(mixed[np.lexsort(mixed.T[::-1])],
                                      data["acts"][hook][10:120][
                                          np.lexsort(data["acts"][hook][10:120].T[::-1])])
        assert "rank" not in s.meta.params
        assert s.meta.params["shards"] == ["shard0.h5", "shard1.h5"]


def test_join_shards_makes_a_virtual_store_that_can_move(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    folder.mkdir()
    data = make_data(130)
    shard(folder / "shard0.h5", 0, 0, 80, data)  # documents 0..7
    shard(folder / "shard1.h5", 1, 80, 130, data)  # documents 8..12
    joined = join_shards(folder / "joined.h5", [folder / "shard0.h5", folder / "shard1.h5"])
    try:
        assert joined.n_rows == 130
    finally:
        joined.close()
    with h5py.File(folder / "joined.h5", "r") as f:
        for name in ("acts/" + HOOKS[0], "acts/" + HOOKS[1], "tokens", "sample", "position",
                     "labels/cls"):
            assert f[name].is_virtual, name
            assert {m.file_name for m in f[name].virtual_sources()} == {"shard0.h5", "shard1.h5"}
    check_joined(folder / "joined.h5", data)

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    assert not folder.exists()
    away = tmp_path / "unrelated"
    away.mkdir()
    monkeypatch.chdir(away)
    check_joined(moved / "joined.h5", data)
    check_joined(Path(os.path.relpath(moved / "joined.h5", away)), data)
    monkeypatch.chdir(moved.parent)
    check_joined(Path("moved") / "joined.h5", data)


def test_join_shards_refuses_mismatched_shards(tmp_path):
    data = make_data(40)
    shard(tmp_path / "a.h5", 0, 0, 20, data)
    meta = replace(make_meta(), model_hash="different", params={"layer_norm": False, "rank": 1})
    with ActivationStore.create(tmp_path / "b.h5", meta, labels=["cls"]) as s:
        s.append(**rows_of(data, 20, 40))
    with pytest.raises(StoreError, match="model_hash"):
        join_shards(tmp_path / "j.h5", [tmp_path / "a.h5", tmp_path / "b.h5"])
    assert not (tmp_path / "j.h5").exists()
