"""Bad capture input as a new user meets it: an empty text file, a negative --max-tokens and
an --out that cannot be written each give one ``error:`` line naming the file, option or
value, a non-zero exit, and leave no file behind (no empty store, no lock, no temporary)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from engine.capture import capture
from engine.errors import LatentLabError, SourceError, StoreError
from engine.jobs import JobContext
from engine.sources import Source, load_source
from tests.test_cli import assert_one_line_error, cli

HOOK = "blocks.1.hook_resid_post"


def run(tiny_llama: Path, out: Path, *extra: str):
    return cli("capture", "--model", str(tiny_llama), "--source", "demo", "--hooks", HOOK,
               "--out", str(out), "--device", "cpu", *extra)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_empty_text_file(tiny_llama, tmp_path):
    empty = tmp_path / "source.txt"
    empty.write_text("")
    out = tmp_path / "out" / "x.h5"
    proc = cli("capture", "--model", str(tiny_llama), "--source", str(empty), "--hooks", HOOK,
               "--out", str(out), "--device", "cpu")
    assert_one_line_error(proc, str(empty), "no documents")
    assert files_in(tmp_path) == ["source.txt"]  # not even --out's folder
    blank = tmp_path / "source.jsonl"
    blank.write_text("\n  \n")
    with pytest.raises(SourceError, match=r"source\.jsonl: no documents"):
        load_source(str(blank))


@pytest.mark.parametrize("value", ["-5", "0"])
def test_max_tokens_not_positive(tiny_llama, tmp_path, value):
    proc = run(tiny_llama, tmp_path / "x.h5", "--max-tokens", value)
    assert_one_line_error(proc, "--max-tokens", value)
    assert files_in(tmp_path) == []


def test_out_in_a_folder_that_cannot_be_written(tiny_llama, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("a file, not a folder\n")
    out = afile / "x.h5"
    assert_one_line_error(run(tiny_llama, out, "--max-tokens", "50"), str(out), "cannot create the store")
    assert files_in(tmp_path) == ["notes.txt"]
    if os.geteuid() == 0:  # root writes into a read-only folder anyway
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        proc = run(tiny_llama, locked / "x.h5", "--max-tokens", "50")
        assert_one_line_error(proc, str(locked / "x.h5"), "Permission denied")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


class NoRows(Source):
    """A source that yields nothing, and so no rows (no file to check up front)."""

    source_id = "test:no-rows"
    kind = "text"

    def __iter__(self):
        return iter(())


def test_a_source_that_gives_no_rows_leaves_no_store(llama, tmp_path):
    ctx = JobContext(device=torch.device("cpu"))
    out = tmp_path / "x.h5"
    with pytest.raises(SourceError, match=r"test:no-rows: gave no rows to capture.*x\.h5 was not written"):
        capture(ctx, model=llama, source=NoRows(), hooks=[HOOK], out=out)
    assert files_in(tmp_path) == []
    for bad in ({"max_tokens": -5}, {"batch_size": 0}, {"ctx_len": 0}):
        with pytest.raises(LatentLabError, match="give a positive number"):
            capture(ctx, model=llama, source="demo", hooks=[HOOK], out=out, **bad)
    assert files_in(tmp_path) == []
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"blocker/x\.h5: cannot create the store in .*blocker"):
        capture(ctx, model=llama, source="demo", hooks=[HOOK], out=blocker / "x.h5", max_tokens=10)
    assert files_in(tmp_path) == ["blocker"]
