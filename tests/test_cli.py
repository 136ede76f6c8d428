"""The command line as a user meets it: bad input gives one line and a non-zero exit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from tests.conftest import run_main

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """main.py in this process (``real_cli``: in its own, as the capture fixture and the
    Ctrl-C test run it, for what only a real process shows)."""
    return run_main(*args, cwd=cwd)


def real_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.fixture(scope="module")
def good_store(tiny_llama, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "good.h5"
    proc = real_cli("capture", "--model", str(tiny_llama), "--source", "demo", "--hooks",
                    "blocks.1.hook_resid_post", "--max-tokens", "600", "--out", str(out), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "600 rows committed" in proc.stdout
    return out


def test_store_info_and_context(good_store, tiny_llama):
    proc = cli("store-info", str(good_store), "--context", "5", "--decode")
    assert proc.returncode == 0, proc.stderr
    assert '"rows": 600' in proc.stdout and '"blocks.1.hook_resid_post": 32' in proc.stdout


def test_text_file_as_store(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a store\n")
    assert_one_line_error(cli("store-info", str(notes)), str(notes), "not an HDF5 file")


def test_truncated_store(good_store, tmp_path):
    cut = tmp_path / "cut.h5"
    data = good_store.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert_one_line_error(cli("store-info", str(cut)), str(cut), "truncated")


def test_newer_format(good_store, tmp_path):
    newer = tmp_path / "newer.h5"
    shutil.copy(good_store, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 99
    assert_one_line_error(cli("store-info", str(newer)), str(newer), "format 99", "newer")


def test_missing_store(tmp_path):
    assert_one_line_error(cli("store-info", str(tmp_path / "none.h5")), "no such file")


def test_unknown_hook_lists_valid(tiny_llama, tmp_path):
    proc = cli("capture", "--model", str(tiny_llama), "--source", "demo", "--hooks", "blocks.99.hook_resid_post",
               "--out", str(tmp_path / "x.h5"))
    assert_one_line_error(proc, "blocks.99.hook_resid_post", "valid: embed, blocks.0.attn.hook_z")


def test_model_path_missing(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    proc = cli("capture", "--model", str(missing), "--source", "demo", "--hooks", "embed",
               "--out", str(tmp_path / "x.h5"))
    assert_one_line_error(proc, str(missing), "does not exist")


def test_source_missing(tiny_llama, tmp_path):
    proc = cli("capture", "--model", str(tiny_llama), "--source", str(tmp_path / "c.jsonl"), "--hooks", "embed",
               "--out", str(tmp_path / "x.h5"))
    assert_one_line_error(proc, "c.jsonl", "no such file")


def test_device_not_available(tiny_llama, tmp_path):
    proc = cli("capture", "--model", str(tiny_llama), "--source", "demo", "--hooks", "embed",
               "--out", str(tmp_path / "x.h5"), "--device", "cuda:3")
    if proc.returncode == 0:
        pytest.skip("this machine has CUDA")
    assert_one_line_error(proc, "cuda:3")


def test_ctrl_c_cancels_cleanly_and_resumes(tiny_llama, tmp_path):
    import os
    import signal
    import time

    from engine.store.activations import ActivationStore
    out = tmp_path / "c.h5"
    args = [sys.executable, str(ROOT / "main.py"), "capture", "--model", str(tiny_llama), "--source", "demo",
            "--hooks", "blocks.0.hook_resid_post", "--max-tokens", "6000", "--batch-size", "1", "--ctx-len", "16",
            "--out", str(out), "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with ActivationStore.open(out) as store:
                if store.n_rows >= 500:
                    break
        except Exception:
            pass
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert not out.with_name(out.name + ".lock").exists()
    with ActivationStore.open(out) as store:
        assert 500 <= store.n_rows < 6000
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "6000 rows committed" in done.stdout, done.stderr
