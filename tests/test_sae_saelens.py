"""LatentLab's SAE files against the real SAELens, run in its own environment (SAELens pins
transformer-lens<4, so it never goes into the project's venv): SAELens loads what save_sae
writes and computes the same codes and reconstructions, and load_sae reads what SAELens
writes with the same outputs. The interpreter is $LATENTLAB_SAELENS_PYTHON, default
.venv-saelens/bin/python, which ``./run.sh test`` makes (once, like .venv). Without it the
tests skip with a word on how to make it; in CI (CI set) they fail instead, unless
LATENTLAB_NO_SAELENS=1 says to skip them."""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.sae.base import ARCHITECTURES
from engine.sae.io import load_sae, save_sae
from tests.test_sae_io import D_IN, D_SAE, inputs, random_sae

with warnings.catch_warnings():  # the marker is registered nowhere else, by design
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    pytestmark = pytest.mark.saelens

ROOT = Path(__file__).resolve().parents[1]
SAELENS_PYTHON = os.environ.get("LATENTLAB_SAELENS_PYTHON", str(ROOT / ".venv-saelens" / "bin" / "python"))
TO_SAELENS = ["relu", "topk", "jumprelu", "batchtopk", "gtopk", "mp"]
FROM_SAELENS = {  # folder written by SAELens -> the LatentLab architecture it loads as
    "standard": "relu", "standard_no_b_dec_in": "relu", "topk": "topk", "topk_training_checkpoint": "topk",
    "topk_trained_inference": "topk", "jumprelu": "jumprelu", "jumprelu_training_checkpoint": "jumprelu",
    "batchtopk_trained_inference": "batchtopk", "matching_pursuit": "mp",
}
ATOL = 1e-5

SCRIPT = r'''
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
import sae_lens
from sae_lens import (SAE, BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, JumpReLUSAE, JumpReLUSAEConfig,
                      JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, MatchingPursuitSAE, MatchingPursuitSAEConfig,
                      StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig)

work = Path(sys.argv[1])
d_in, d_sae = int(sys.argv[2]), int(sys.argv[3])
x = load_file(work / "x.safetensors")["x"]
report = {"version": sae_lens.__version__, "classes": {}}

@torch.no_grad()
def outputs(sae, name, folder):
    codes = sae.encode(x)
    save_file({"codes": codes.contiguous(), "x_hat": sae.decode(codes).contiguous(),
               "forward": sae(x).contiguous()}, folder / f"{name}.safetensors")
    report["classes"][name] = type(sae).__name__

# 1. SAELens loads LatentLab's folders
(work / "ll_out").mkdir()
for folder in sorted((work / "ll").iterdir()):
    outputs(SAE.load_from_disk(folder), folder.name, work / "ll_out")

# 2. SAELens writes folders for LatentLab
@torch.no_grad()
def randomise(sae, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in sae.named_parameters():
        if name == "threshold":
            p.copy_(torch.rand(p.shape, generator=g) * 0.4)
            p[:5] = 0.0
        else:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return sae

out = work / "sl"
out.mkdir()
def inference(name, sae):
    sae.save_model(out / name)
    outputs(SAE.load_from_disk(out / name), name, out)

inference("standard", randomise(StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae)), 1))
inference("standard_no_b_dec_in", randomise(StandardSAE(StandardSAEConfig(
    d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False)), 2))
inference("topk", randomise(TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=5)), 3))
inference("jumprelu", randomise(JumpReLUSAE(JumpReLUSAEConfig(d_in=d_in, d_sae=d_sae)), 4))
mp = MatchingPursuitSAE(MatchingPursuitSAEConfig(d_in=d_in, d_sae=d_sae, residual_threshold=0.0,
                                                 max_iterations=6, stop_on_duplicate_support=False))
with torch.no_grad():
    randomise(mp, 5).W_dec.div_(mp.W_dec.norm(dim=1, keepdim=True))
inference("matching_pursuit", mp)

topk_t = randomise(TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=5)), 6)
topk_t.save_model(out / "topk_training_checkpoint")  # rescale_acts_by_decoder_norm, decoder norm ~0.1
outputs(topk_t, "topk_training_checkpoint", out)
topk_t.save_inference_model(out / "topk_trained_inference")
outputs(SAE.load_from_disk(out / "topk_trained_inference"), "topk_trained_inference", out)

jr_t = randomise(JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(d_in=d_in, d_sae=d_sae)), 7)
jr_t.save_model(out / "jumprelu_training_checkpoint")
outputs(jr_t, "jumprelu_training_checkpoint", out)

btk = randomise(BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=4)), 8)
btk.topk_threshold = torch.tensor(0.05, dtype=torch.double)
btk.save_inference_model(out / "batchtopk_trained_inference")
outputs(SAE.load_from_disk(out / "batchtopk_trained_inference"), "batchtopk_trained_inference", out)

(work / "report.json").write_text(json.dumps(report))
'''


@pytest.fixture(scope="module")
def exchange(tmp_path_factory):
    """Run SAELens once: it loads LatentLab's folders and writes its own; returns the folder."""
    if os.environ.get("LATENTLAB_NO_SAELENS") == "1":
        pytest.skip("LATENTLAB_NO_SAELENS=1")
    if not Path(SAELENS_PYTHON).exists():
        why = (f"no SAELens interpreter at {SAELENS_PYTHON}: ./run.sh test makes .venv-saelens "
               "(or set LATENTLAB_SAELENS_PYTHON; LATENTLAB_NO_SAELENS=1 skips these tests)")
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    work = tmp_path_factory.mktemp("saelens")
    save_file({"x": inputs(seed=11, n=128)}, work / "x.safetensors")
    for arch in TO_SAELENS:
        if arch in ARCHITECTURES:
            save_sae(random_sae(arch, seed=21), work / "ll" / arch)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "TRANSFORMERS_VERBOSITY": "error"}
    proc = subprocess.run([SAELENS_PYTHON, "-c", SCRIPT, str(work), str(D_IN), str(D_SAE)],
                          capture_output=True, text=True, timeout=400, env=env)
    if proc.returncode != 0:
        pytest.fail(f"the SAELens script failed:\n{proc.stderr[-4000:]}")
    return work


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@pytest.mark.parametrize("arch", TO_SAELENS)
def test_saelens_computes_what_latentlab_saved(arch, exchange):
    if arch not in ARCHITECTURES:
        pytest.skip(f"engine/sae/{arch}.py is not there yet")
    sae = random_sae(arch, seed=21)
    got = load_file(exchange / "ll_out" / f"{arch}.safetensors")
    with torch.no_grad():
        ours = sae(load_file(exchange / "x.safetensors")["x"])
    assert (ours.codes > 0).any()
    close(got["codes"], ours.codes)
    close(got["x_hat"], ours.x_hat)
    close(got["forward"], ours.x_hat)


@pytest.mark.parametrize("name", sorted(FROM_SAELENS))
def test_latentlab_loads_what_saelens_saved(name, exchange):
    arch = FROM_SAELENS[name]
    if arch not in ARCHITECTURES:
        pytest.skip(f"engine/sae/{arch}.py is not there yet")
    sae = load_sae(exchange / "sl" / name)
    assert sae.architecture == arch
    want = load_file(exchange / "sl" / f"{name}.safetensors")
    with torch.no_grad():
        ours = sae(load_file(exchange / "x.safetensors")["x"])
    assert (want["codes"] > 0).any()
    close(ours.codes, want["codes"])
    close(ours.x_hat, want["x_hat"])
    close(ours.x_hat, want["forward"])


def test_saelens_version_recorded(exchange):
    report = json.loads((exchange / "report.json").read_text())
    assert report["version"].split(".")[0] == "6"
    assert report["classes"].get("relu", "StandardSAE") == "StandardSAE"
    assert report["classes"].get("batchtopk", "JumpReLUSAE") == "JumpReLUSAE"
    assert report["classes"].get("mp", "MatchingPursuitSAE") == "MatchingPursuitSAE"
