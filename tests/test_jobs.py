"""The job protocol: device choice, cancellation, progress reporting."""

from __future__ import annotations

import io

import pytest
import torch

from engine.errors import LatentLabError
from engine.jobs import Cancelled, JobContext, TerminalProgress, resolve_device, run_cli


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(None) == resolve_device("auto")
    with pytest.raises(LatentLabError, match="'potato' is not a torch device"):
        resolve_device("potato")
    if not torch.cuda.is_available():
        with pytest.raises(LatentLabError, match="no GPU"):
            resolve_device("cuda")


def test_context_reports_and_cancels():
    seen, partials = [], []
    ctx = JobContext(device=torch.device("cpu"), on_progress=lambda *a: seen.append(a),
                     on_partial=partials.append)

    def job(ctx, n):
        for i in range(n):
            ctx.check_cancelled()
            ctx.progress(i + 1, n, "step")
            ctx.partial({"i": i})
            if i == 2:
                ctx.cancel()
        return "finished"

    with pytest.raises(Cancelled):
        job(ctx, 10)
    assert seen == [(1, 10, "step"), (2, 10, "step"), (3, 10, "step")]
    assert partials == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert run_cli(job, device="cpu", quiet=True, n=2) == "finished"


def test_terminal_progress_draws_a_bar():
    stream = io.StringIO()
    bar = TerminalProgress(stream, width=10)
    bar(5, 10, "half")
    bar(10, 10, "done")
    bar.close()
    text = stream.getvalue()
    assert "[#####     ]" in text and "[##########] 100.0% 10/10" in text and text.endswith("\n")
