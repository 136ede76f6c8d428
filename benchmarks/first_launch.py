"""Launch to first scatter: the real app (``main.py``, every view) started as a user starts
it, timed from the parent's ``Popen`` to the moment the embedding scatter first paints
points (the scatter prints that moment when LATENTLAB_FIRST_SCATTER is set). Cases, run
interleaved, ``--repeats`` times each:

  first      a fresh workspace folder (LATENTLAB_WORKSPACE), the model cache warm (the
             SmolLM2 safetensors converted once, numba's kernels compiled)
  second     the same folder launched again (the first launch was ended at its first
             scatter, so the capture goes on from the rows it had)
  older      a copy of a whole older demo workspace (one hook point; ``--older``): every
             stage is found complete, and its other hook points are captured afterwards
  cold       a fresh workspace and an empty LatentLab cache (LATENTLAB_CACHE): the GGUF
             file is converted to safetensors and umap's kernels compile in the background

Each launch is ended (its process group killed) once the scatter has painted. With
``--breakdown`` one more process times the steps of a first launch one after another, in
the order the app meets them: imports, model load, capture of the first slice, its PCA.

    xvfb-run -a .venv/bin/python benchmarks/first_launch.py [--repeats 3] [--cases first,second,older,cold]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OLDER = Path.home() / ".local/share/latentlab/demo"
MARK = "first scatter painted:"
CASES = ("first", "second", "older", "cold")


def launch(workspace: Path, cache: Path | None, config: Path, timeout: float) -> dict:
    """Start ``main.py`` on ``workspace``; seconds from Popen to the first painted scatter."""
    env = dict(os.environ, LATENTLAB_WORKSPACE=str(workspace), LATENTLAB_FIRST_SCATTER="1",
               XDG_CONFIG_HOME=str(config), PYTHONUNBUFFERED="1")
    if cache is not None:
        env["LATENTLAB_CACHE"] = str(cache)
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("QT_QPA_PLATFORM", "offscreen")
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--device", "cpu"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its group: the app and any process it starts
    result = {"seconds": None, "points": None}
    try:
        deadline, text = t0 + timeout, ""
        while "\n" not in text.partition(MARK)[2] and time.time() < deadline:  # the whole line
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.time()))
            chunk = os.read(proc.stdout.fileno(), 65536) if ready else b""
            if not chunk:
                break  # ended, or no first scatter in time (result None)
            text += chunk.decode(errors="replace")
        line = next((x for x in text.splitlines() if x.startswith(MARK)), "")
        if line:
            words = line.split()
            result = {"seconds": round(float(words[-1]) - t0, 2), "points": int(words[3])}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return result


def breakdown() -> dict:
    """In a fresh process: the steps of a first launch one after another, in seconds."""
    code = r"""
import json, sys, time, tempfile
t = [time.time()]
sys.path.insert(0, sys.argv[1])
import main
from desktop_app import app
main.gui_views()
t.append(time.time())
import torch
from engine.api import JobContext, capture, project
from engine.demo import DEMO_HOOK, FIRST_TOKENS, DemoSpec
from engine.models.registry import cached_model
cached_model("smollm2", "float32")
t.append(time.time())
out = tempfile.mkdtemp() + "/first.h5"
ctx = JobContext(device=torch.device("cpu"))
capture(ctx, **DemoSpec().capture_spec(__import__("pathlib").Path(out), max_tokens=FIRST_TOKENS).job_params())
t.append(time.time())
project(ctx, out, DEMO_HOOK, "pca", "rows")
t.append(time.time())
names = ["imports (main, the shell, every view)", "model load (cached safetensors)",
         f"capture of the first {FIRST_TOKENS} rows (4 hook points)", "PCA of those rows"]
print(json.dumps({n: round(b - a, 2) for n, a, b in zip(names, t, t[1:])}))
"""
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", code, str(ROOT)], cwd=ROOT, check=True, capture_output=True,
                         text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    steps = json.loads(out.stdout.strip().splitlines()[-1])
    steps["interpreter start + the above (from Popen)"] = round(time.time() - t0, 2)
    return steps


def summary(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    if not got:
        return {"runs": values}
    return {"min": min(got), "median": round(statistics.median(got), 2), "max": max(got), "runs": values}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--older", default=str(OLDER), help="an older (one hook point) demo workspace to copy")
    p.add_argument("--timeout", type=float, default=240.0)
    p.add_argument("--breakdown", action="store_true", help="also time a first launch's steps one by one")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "first_launch.json"))
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        p.error(f"unknown cases {unknown}; choose from {list(CASES)}")
    scratch = Path(tempfile.mkdtemp(prefix="latentlab-first-launch-"))
    config = scratch / "config"  # the app's settings (recent lists) stay out of the user's
    record: dict = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "load_average_before": os.getloadavg(), "cores": os.cpu_count()}
    try:
        if "older" in cases:
            shutil.copytree(args.older, scratch / "older", ignore=shutil.ignore_patterns("*_layers.h5*", "growing"))
        if args.breakdown:
            record["breakdown_s"] = breakdown()
            print(json.dumps(record["breakdown_s"], indent=1), flush=True)
        runs: dict[str, list] = {c: [] for c in cases}
        for rep in range(args.repeats):
            for case in cases:
                folder = {"second": scratch / f"first{rep}", "older": scratch / "older"}.get(case, scratch / f"{case}{rep}")
                cache = scratch / f"cache{rep}" if case == "cold" else None
                r = {"load_average": round(os.getloadavg()[0], 1), **launch(folder, cache, config, args.timeout)}
                runs[case].append(r)
                print(f"{case:6s} run {rep + 1}: first scatter {r['seconds']} s ({r['points']} points; "
                      f"load average {r['load_average']})", flush=True)
                if case in ("second", "cold") or case == "first" and "second" not in cases:
                    shutil.rmtree(folder, ignore_errors=True)
                    if cache is not None:
                        shutil.rmtree(cache, ignore_errors=True)
        record["load_average_after"] = os.getloadavg()
        record["first_scatter_s"] = {c: summary([r["seconds"] for r in rs]) for c, rs in runs.items()}
        record["runs"] = runs
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(record["first_scatter_s"], indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
