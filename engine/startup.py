"""What the app needs before its heavy imports, so cheap to import (no torch): the light
second front door beside ``engine.api``.

The demo's first slice is captured by a process that ``main.py`` starts before the window's
imports: loading the model (imports included, most of it) and capturing the first rows then
run on the second core while the window's own imports run on the first, instead of after
them. The demo job waits for that process before it touches the store, and goes on from
the rows it committed. Importing this is cheap (no torch): main.py needs it first."""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine.cache import default_workspace

_process: subprocess.Popen | None = None
_root: Path | None = None  # the workspace it captures for


def start_first_slice(root: str | os.PathLike | None = None, device: str | None = None,
                      spec_json: str = "") -> subprocess.Popen | None:
    """Start capturing the first slice of the demo store of workspace ``root`` (default: the
    default workspace; the spec: the DemoSpec ``spec_json``, else the demo's default) in a
    process; None when ``root`` already has a demo store (a second launch goes on from it
    in the demo job) or a first slice is being captured."""
    global _process, _root
    if first_slice_running() is not None:
        return None
    root = default_workspace() if root is None else Path(root)
    if any((root / "stores").glob("demo_*.h5")):
        return None
    top = Path(__file__).resolve().parents[1]
    # os._exit: once the store is closed, nothing is left to tear down but seconds of torch
    code = "import os, sys; from engine.demo import first_slice_main; first_slice_main(sys.argv[1:]); os._exit(0)"
    _process, _root = subprocess.Popen(
        [sys.executable, "-c", code, str(root), device or "", spec_json], cwd=top,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(top), os.environ.get("PYTHONPATH")])))), root
    atexit.register(_process.terminate)  # ended with the app; the demo job captures the rest
    return _process


def first_slice_running() -> subprocess.Popen | None:
    """The first-slice process while it runs, else None."""
    return _process if _process is not None and _process.poll() is None else None


def wait_first_slice(root: str | os.PathLike, check: Callable[[], None], poll_s: float = 0.05) -> int | None:
    """Block until the first-slice process for workspace ``root``, if one was started, has
    ended, calling ``check`` (which may raise to cancel) between polls; its exit code (once:
    later calls return None), or None when none was started for ``root``."""
    global _process, _root
    process = _process
    if process is None or _root is None or _root.resolve() != Path(root).resolve():
        return None
    while process.poll() is None:
        check()
        time.sleep(poll_s)
    _process = _root = None
    return process.returncode
