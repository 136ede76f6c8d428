"""Every SAE format load_sae reads, against the files each peer library writes itself: EleutherAI
sparsify (``SparseCoder.save_to_disk``), dictionary_learning (its trainers' ``update`` steps,
then ae.pt and config.json saved as its ``trainSAE`` saves them, norm factor folded in by its
own ``scale_biases``) and overcomplete (``torch.save(sae.state_dict())``, its only checkpoint).
The peers run in a side environment, $LATENTLAB_PEERS_PYTHON, default .venv-peers/bin/python,
which .ci/run makes (torch, and the three packages without their training/vision dependencies);
the script imports the peers' SAE modules without their packages' ``__init__`` (which import
nnsight, timm, datasets: training and vision code the SAE classes do not use). Each file must
give the peer's own codes and reconstruction on the same rows to 1e-5 relative. Without the
environment these tests skip with a word on how to make it; in CI they fail instead, unless
LATENTLAB_NO_PEERS=1 says to skip them. The rest (detection, errors, sae-info, the HF cache)
needs no peer."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import LatentLabError
from engine.features.encode import cached_sae
from engine.sae.formats import detect_sae_format, sae_files, sae_info
from engine.sae.formats.hub import saelens_release
from engine.sae.io import SAEFileError, load_sae, save_sae
from tests.test_sae_io import D_IN, D_SAE, inputs, random_sae

ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = os.environ.get("LATENTLAB_PEERS_PYTHON", str(ROOT / ".venv-peers" / "bin" / "python"))
RTOL = 1e-5
# folder written by a peer -> (format, LatentLab architecture)
PEER_FILES = {
    "sparsify/layers.3": ("sparsify", "topk"),
    "dl/standard": ("dictionary_learning", "relu"),
    "dl/topk": ("dictionary_learning", "topk"),
    "dl/batchtopk": ("dictionary_learning", "batchtopk"),
    "dl/matryoshka": ("dictionary_learning", "batchtopk"),
    "dl/jumprelu": ("dictionary_learning", "jumprelu"),
    "dl/gated": ("dictionary_learning", "gated"),
    "oc/sae": ("overcomplete", "relu"),
    "oc/topk": ("overcomplete", "topk"),
    "oc/topk_bn": ("overcomplete", "topk"),
    "oc/jump": ("overcomplete", "jumprelu"),
}

SCRIPT = r'''
import importlib.util, json, sys, types
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file

def bare(name):
    """Import package ``name``'s modules without running its __init__ (training/vision imports)."""
    spec = importlib.util.find_spec(name)
    module = types.ModuleType(name)
    module.__path__ = list(spec.submodule_search_locations)
    sys.modules[name] = module
    return module

work = Path(sys.argv[1])
d_in, d_sae = int(sys.argv[2]), int(sys.argv[3])
x = load_file(work / "x.safetensors")["x"]
g = torch.Generator().manual_seed(0)

@torch.no_grad()
def jiggle(module, scale=0.1):
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))
    return module

def record(name, codes, x_hat):
    save_file({"codes": codes.detach().contiguous(), "x_hat": x_hat.detach().contiguous()},
              work / "out" / (name.replace("/", "__") + ".safetensors"))

(work / "out").mkdir()
versions = {}

# ---- EleutherAI sparsify: SparseCoder.save_to_disk, one folder per hook point
bare("sparsify")
from sparsify.config import SparseCoderConfig
from sparsify.sparse_coder import SparseCoder
from importlib.metadata import version
versions["eai-sparsify"] = version("eai-sparsify")
for hook, k in (("layers.3", 5), ("layers.5", 3)):
    sc = jiggle(SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k)))
    with torch.no_grad():
        sc.b_dec.copy_(0.3 * torch.randn(d_in, generator=g))
    sc.save_to_disk(work / "sparsify" / hook)
    sc = SparseCoder.load_from_disk(work / "sparsify" / hook)
    with torch.no_grad():
        acts, idx, _ = sc.encode(x)
        codes = torch.zeros(len(x), d_sae).scatter(1, idx, acts)
        record("sparsify/" + hook, codes, sc.decode(acts, idx))

# ---- dictionary_learning: its trainers' steps, saved as trainSAE saves (training.py)
bare("dictionary_learning")
import dictionary_learning.trainers as dlt
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer
versions["dictionary-learning"] = version("dictionary-learning")
common = dict(steps=10, activation_dim=d_in, dict_size=d_sae, layer=3, lm_name="tiny-llama",
              submodule_name="model.layers.3", device="cpu", seed=0)
topk = dict(k=4, threshold_start_step=0, warmup_steps=1)
trainers = {
    "standard": dlt.StandardTrainer(**common, warmup_steps=1, sparsity_warmup_steps=1),
    "topk": dlt.TopKTrainer(**common, **topk),
    "batchtopk": dlt.BatchTopKTrainer(**common, **topk),
    "matryoshka": MatryoshkaBatchTopKTrainer(**common, **topk, group_fractions=[0.25, 0.75]),
    "jumprelu": dlt.JumpReluTrainer(**common, warmup_steps=1, sparsity_warmup_steps=1),
    "gated": dlt.GatedSAETrainer(**common, warmup_steps=1, sparsity_warmup_steps=1),
}
norm_factor = float(torch.sqrt((x ** 2).sum(1).mean()))  # trainSAE's get_norm_factor
for name, trainer in trainers.items():
    normalise = name in ("topk", "jumprelu")  # trainSAE(normalize_activations=True)
    for step in range(6):
        act = 0.5 + torch.randn(256, d_in, generator=g)
        trainer.update(step, act / norm_factor if normalise else act)
    if name == "gated":  # a few steps leave r_mag, the biases at their start: move them
        jiggle(trainer.ae)
    folder = work / "dl" / name
    folder.mkdir(parents=True)
    config = {"trainer": trainer.config}
    if normalise:
        config["trainer"]["norm_factor"] = norm_factor
        trainer.ae.scale_biases(norm_factor)
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    torch.save({k: v.cpu() for k, v in trainer.ae.state_dict().items()}, folder / "ae.pt")
    ae = trainer.ae.eval()
    with torch.no_grad():
        f = ae.encode(x)
        record("dl/" + name, f, ae.decode(f))

# ---- overcomplete: torch.save(sae.state_dict()), the constructor's arguments in config.json
bare("overcomplete"); sae_pkg = bare("overcomplete.sae")
from overcomplete.sae.base import SAE
sae_pkg.SAE = SAE
from overcomplete.sae.topk_sae import TopKSAE
from overcomplete.sae.jump_sae import JumpSAE
versions["overcomplete"] = version("overcomplete")
models = {
    "sae": (SAE(d_in, d_sae), {"sae": "SAE"}),
    "topk": (TopKSAE(d_in, d_sae, top_k=6), {"sae": "TopKSAE", "top_k": 6, "hook_name": "vit.blocks.7"}),
    "topk_bn": (TopKSAE(d_in, d_sae, top_k=5, encoder_module="mlp_bn_1"),
                {"sae": "TopKSAE", "top_k": 5, "encoder_module": "mlp_bn_1"}),
    "jump": (JumpSAE(d_in, d_sae), {}),
}
for name, (model, config) in models.items():
    jiggle(model)
    if name == "topk_bn":  # running statistics as training leaves them
        model.train()
        for _ in range(3):
            model(0.2 + torch.randn(64, d_in, generator=g))
    if name == "jump":
        with torch.no_grad():
            model.thresholds.copy_(-1.5 + 0.3 * torch.randn(d_sae, generator=g))
    folder = work / "oc" / name
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model.pt")
    if config:
        (folder / "config.json").write_text(json.dumps(config))
    model.eval()
    with torch.no_grad():
        _, codes, x_hat = model(x)
        record("oc/" + name, codes, x_hat)

(work / "versions.json").write_text(json.dumps(versions))
'''


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    """Run the peers once: each writes its files and its own outputs; returns the folder."""
    if os.environ.get("LATENTLAB_NO_PEERS") == "1":
        pytest.skip("LATENTLAB_NO_PEERS=1")
    if not Path(PEERS_PYTHON).exists():
        why = (f"no peer-library interpreter at {PEERS_PYTHON}: .ci/run makes .venv-peers "
               "(or set LATENTLAB_PEERS_PYTHON; LATENTLAB_NO_PEERS=1 skips these tests)")
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(why, pytrace=False)
        pytest.skip(why)
    work = tmp_path_factory.mktemp("peers")
    save_file({"x": 0.5 + inputs(seed=11, n=128)}, work / "x.safetensors")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "SPARSIFY_DISABLE_TRITON": "1"}
    proc = subprocess.run([PEERS_PYTHON, "-c", SCRIPT, str(work), str(D_IN), str(D_SAE)],
                          capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode != 0:
        pytest.fail(f"the peer script failed:\n{proc.stderr[-4000:]}")
    return work


def relative_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """got == want to RTOL of want's scale (its largest magnitude)."""
    scale = float(want.abs().max())
    torch.testing.assert_close(got.float(), want.float(), atol=RTOL * max(scale, 1e-12), rtol=RTOL)


@pytest.mark.parametrize("name", sorted(PEER_FILES))
def test_peer_files_give_the_peers_outputs(name, peers):
    fmt, arch = PEER_FILES[name]
    folder = peers / name
    assert detect_sae_format(folder) == fmt
    sae = load_sae(folder)
    assert sae.architecture == arch
    want = load_file(peers / "out" / (name.replace("/", "__") + ".safetensors"))
    with torch.no_grad():
        ours = sae(load_file(peers / "x.safetensors")["x"])
    assert (want["codes"] > 0).sum(1).float().mean() >= 1  # codes fire: the comparison means something
    relative_close(ours.codes, want["codes"])
    relative_close(ours.x_hat, want["x_hat"])


def test_peer_facts(peers):
    assert set(json.loads((peers / "versions.json").read_text())) == {"eai-sparsify", "dictionary-learning",
                                                                      "overcomplete"}
    topk = load_sae(peers / "sparsify" / "layers.3")
    assert (topk.cfg.k, topk.cfg.hook_name) == (5, "layers.3")
    info = sae_info(peers / "dl" / "topk")
    assert info["format"] == "dictionary_learning" and info["hook point"] == "model.layers.3"
    assert info["k"].startswith("4 ") and "folded into the saved weights" in info["normalisation"]
    assert float(load_sae(peers / "dl" / "batchtopk").threshold) > 0  # learnt by its trainer, not the -1 start
    assert load_sae(peers / "oc" / "topk").cfg.hook_name == "vit.blocks.7"
    assert load_sae(peers / "oc" / "topk" / "model.pt").cfg.k == 6  # the checkpoint file itself opens too
    with pytest.raises(SAEFileError, match="2 hook points.*layers.3, layers.5"):
        load_sae(peers / "sparsify")
    with pytest.raises(SAEFileError, match="holds 6 dictionary_learning SAEs .batchtopk, gated"):
        load_sae(peers / "dl")  # trainSAE's save_dir: a trainer_N folder per SAE
    assert [f.name for f in sae_files(peers / "sparsify" / "layers.3")] == ["cfg.json", "sae.safetensors"]
    assert [f.name for f in sae_files(peers / "oc" / "topk")] == ["model.pt", "config.json"]
    assert cached_sae(peers / "dl" / "topk") is cached_sae(peers / "dl" / "topk")  # loaded once, any format


def test_peer_sae_reloads_as_latentlab(peers, tmp_path):
    """A peer's SAE saved by LatentLab opens as LatentLab's own, with the same outputs."""
    sae = load_sae(peers / "dl" / "jumprelu")
    save_sae(sae, tmp_path / "again")
    again = load_sae(tmp_path / "again")
    assert detect_sae_format(tmp_path / "again") == "latentlab"
    assert again.cfg.extra["format"]["name"] == "dictionary_learning"
    x = load_file(peers / "x.safetensors")["x"]
    with torch.no_grad():
        relative_close(again(x).x_hat, sae(x).x_hat)


def test_peer_saes_get_latent_layouts_cached_by_their_weights(peers, tmp_path):
    """A latent layout of a sparsify or dictionary_learning SAE is computed, then found in the
    cache (keyed on that format's weights file)."""
    from engine.jobs import JobContext
    from engine.projection.layouts import project
    for folder in (peers / "dl" / "jumprelu", peers / "sparsify" / "layers.3"):
        cache = tmp_path / folder.parent.name
        first = project(JobContext(), None, "", "pca", what="latents", sae_path=folder, cache_dir=cache)
        assert len(first.ids) == load_sae(folder).cfg.d_sae and len(list(cache.iterdir())) == 1
        again = project(JobContext(), None, "", "pca", what="latents", sae_path=folder, cache_dir=cache)
        assert (again.xy == first.xy).all() and len(list(cache.iterdir())) == 1  # from the cache


# ------------------------------------------------------------------ no peer needed
def test_detection_by_file_names(tmp_path):
    save_sae(random_sae("topk"), tmp_path / "ours")
    assert detect_sae_format(tmp_path / "ours") == "latentlab"
    assert detect_sae_format(ROOT / "tests" / "data" / "old_format_sae") == "latentlab"
    cfg = json.loads((tmp_path / "ours" / "cfg.json").read_text())
    del cfg["latentlab"]
    (tmp_path / "ours" / "cfg.json").write_text(json.dumps(cfg))
    assert detect_sae_format(tmp_path / "ours") == "saelens"
    assert load_sae(tmp_path / "ours").architecture == "topk"
    for folder, files, fmt in (("sp", ("cfg.json", "sae.safetensors"), "sparsify"),
                               ("dl", ("ae.pt", "config.json"), "dictionary_learning"),
                               ("oc", ("sae.pth",), "overcomplete")):
        (tmp_path / folder).mkdir()
        for name in files:
            (tmp_path / folder / name).write_bytes(b"")
        assert detect_sae_format(tmp_path / folder) == fmt


def test_unknown_layout_names_the_files(tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(SAEFileError) as info:
        load_sae(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message and "notes.txt, weights.npz" in message and "\n" not in message
    assert isinstance(info.value, LatentLabError)


def test_checkpoint_of_a_whole_model_is_refused(tmp_path):
    """weights_only=True: a pickled module is refused with a sentence, never unpickled."""
    torch.save(torch.nn.Linear(3, 4), tmp_path / "model.pt")
    with pytest.raises(SAEFileError, match="weights_only=True"):
        load_sae(tmp_path)
    torch.save({"encoder.weight": torch.zeros(4, 3)}, tmp_path / "model.pt")
    with pytest.raises(SAEFileError, match="dictionary._weights"):
        load_sae(tmp_path)


def test_unsupported_peer_options_are_named(tmp_path):
    folder = tmp_path / "layers.0"
    folder.mkdir()
    (folder / "cfg.json").write_text(json.dumps({"activation": "groupmax", "k": 4, "d_in": D_IN}))
    (folder / "sae.safetensors").write_bytes(b"")
    with pytest.raises(SAEFileError, match="'activation' is 'groupmax'"):
        load_sae(folder)
    other = tmp_path / "crosscoder"
    other.mkdir()
    torch.save({"encoder.weight": torch.zeros(D_SAE, D_IN)}, other / "ae.pt")
    (other / "config.json").write_text(json.dumps({"trainer": {"dict_class": "CrossCoder"}}))
    with pytest.raises(SAEFileError, match="'trainer.dict_class' is 'CrossCoder'.*GatedAutoEncoder"):
        load_sae(other)


def test_sae_info_command(tmp_path, capsys):
    from main import main

    save_sae(random_sae("jumprelu"), tmp_path / "jr")
    assert main(["sae-info", str(tmp_path / "jr")]) == 0
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.strip().splitlines())
    assert lines["format"].strip() == "latentlab" and lines["architecture"].strip().startswith("jumprelu")
    assert (lines["d_in"].strip(), lines["d_sae"].strip()) == (str(D_IN), str(D_SAE))
    assert lines["threshold"].strip().startswith("per latent: min")
    assert lines["hook point"].strip() == "model.layers.3" and lines["normalisation"].strip() == "none"
    assert main(["sae-info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "found jr" in err and "Traceback" not in err


def test_release_ids_resolve_from_the_local_hf_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(SAEFileError, match="not in the local Hugging Face cache.*huggingface-cli download owner/sae-repo"):
        load_sae("hf:owner/sae-repo/blocks.2.hook_resid_post")
    repo = cache / "models--owner--sae-repo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    save_sae(random_sae("relu"), repo / "snapshots" / "abc123" / "blocks.2.hook_resid_post")
    assert load_sae("hf:owner/sae-repo/blocks.2.hook_resid_post").architecture == "relu"
    table = tmp_path / "pretrained_saes.yaml"
    table.write_text("my-release:\n  repo_id: owner/sae-repo\n  saes:\n  - id: layer_2\n"
                     "    path: blocks.2.hook_resid_post\n")
    assert saelens_release("my-release", "layer_2", "x", table) == ("owner/sae-repo", "blocks.2.hook_resid_post")
    with pytest.raises(SAEFileError, match="has no SAE 'layer_9'; it has layer_2"):
        saelens_release("my-release", "layer_9", "x", table)


def test_saelens_release_id_from_saelens_table(tmp_path, monkeypatch):
    """saelens:RELEASE/SAE_ID through SAELens's own release table (in .venv-saelens) and a
    local cache holding that release's folder."""
    from engine.sae.formats.hub import releases_file

    if releases_file() is None:
        pytest.skip("no SAELens release table here (./run.sh test makes .venv-saelens)")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    folder = tmp_path / "models--jbloom--GPT2-Small-SAEs-Reformatted" / "snapshots" / "r1" / "blocks.3.hook_resid_pre"
    save_sae(random_sae("topk"), folder)
    assert sae_info("saelens:gpt2-small-res-jb/blocks.3.hook_resid_pre")["format"] == "latentlab"
    with pytest.raises(SAEFileError, match="has no SAE 'blocks.99.nothing'"):
        load_sae("saelens:gpt2-small-res-jb/blocks.99.nothing")


# ------------------------------------------------------------------ SAELens's gated SAEs
SAELENS_PYTHON = os.environ.get("LATENTLAB_SAELENS_PYTHON", str(ROOT / ".venv-saelens" / "bin" / "python"))
GATED_SCRIPT = r'''
import sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE, GatedSAE, GatedSAEConfig, GatedTrainingSAE, GatedTrainingSAEConfig

work = Path(sys.argv[1])
d_in, d_sae = int(sys.argv[2]), int(sys.argv[3])
x = load_file(work / "x.safetensors")["x"]
g = torch.Generator().manual_seed(3)

@torch.no_grad()
def record(sae, name):
    codes = sae.encode(x)
    save_file({"codes": codes.contiguous(), "x_hat": sae.decode(codes).contiguous()}, work / f"{name}.safetensors")

@torch.no_grad()
def jiggle(sae):
    for p in sae.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g))
    return sae

record(SAE.load_from_disk(work / "ll_gated"), "ll_gated")  # SAELens opens LatentLab's gated folder
jiggle(GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=d_sae))).save_model(work / "gated")
jiggle(GatedSAE(GatedSAEConfig(d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=False))).save_model(work / "gated_no_b_dec_in")
jiggle(GatedTrainingSAE(GatedTrainingSAEConfig(d_in=d_in, d_sae=d_sae))).save_model(work / "gated_training")
for name in ("gated", "gated_no_b_dec_in", "gated_training"):
    record(SAE.load_from_disk(work / name), name)
'''


def test_gated_saes_both_ways_with_saelens(tmp_path):
    """SAELens's gated SAEs (inference, without b_dec on the input, a training checkpoint) open
    with SAELens's outputs, and SAELens opens LatentLab's gated SAE with LatentLab's outputs."""
    if os.environ.get("LATENTLAB_NO_SAELENS") == "1" or not Path(SAELENS_PYTHON).exists():
        if os.environ.get("CI", "").lower() not in ("", "0", "false") and os.environ.get("LATENTLAB_NO_SAELENS") != "1":
            pytest.fail(f"no SAELens interpreter at {SAELENS_PYTHON}", pytrace=False)
        pytest.skip("no SAELens environment (./run.sh test makes .venv-saelens)")
    x = 0.5 + inputs(seed=12, n=96)
    save_file({"x": x}, tmp_path / "x.safetensors")
    ours = random_sae("gated", seed=5)
    with torch.no_grad():
        ours.r_mag.copy_(0.3 * torch.randn(D_SAE))
        ours.b_mag.copy_(0.2 * torch.randn(D_SAE))
    save_sae(ours, tmp_path / "ll_gated")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    proc = subprocess.run([SAELENS_PYTHON, "-c", GATED_SCRIPT, str(tmp_path), str(D_IN), str(D_SAE)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("ll_gated", "gated", "gated_no_b_dec_in", "gated_training"):
        sae = load_sae(tmp_path / name)  # LatentLab reopens its own file too
        assert sae.architecture == "gated"
        want = load_file(tmp_path / f"{name}.safetensors")
        with torch.no_grad():
            got = sae(x)
        assert (want["codes"] > 0).sum(1).float().mean() >= 1, name
        relative_close(got.codes, want["codes"])
        relative_close(got.x_hat, want["x_hat"])


@pytest.fixture
def one_thread():
    """Tiny matrices: torch's thread pool only costs time on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_gated_training_learns(one_thread):
    """The gated loss trains both paths: on sparse synthetic rows the reconstruction error
    falls well below its start, and the gate's bias moves (the step function passes it no
    gradient: the L1 and auxiliary terms reach it)."""
    from engine.sae.base import SAEConfig, TrainState, build_sae

    g = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(24, D_IN, generator=g), dim=1)
    picks = (torch.rand(2048, 24, generator=g) < 0.1).float() * torch.rand(2048, 24, generator=g) * 3
    x = picks @ atoms
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch="gated", d_in=D_IN, d_sae=D_SAE, l1_coeff=1e-3))
    opt = torch.optim.Adam(sae.parameters(), lr=5e-3)
    b_gate = sae.b_enc.detach().clone()
    first = None
    for i in range(200):
        batch = x[(i * 256) % 2048:][:256]
        step = sae.training_step(batch, TrainState())
        first = float(step.parts["mse"]) if first is None else first
        opt.zero_grad()
        step.loss.backward()
        opt.step()
        sae.normalize_decoder()
    with torch.no_grad():
        last = float(((sae(x).x_hat - x) ** 2).sum(1).mean())
    assert last < 0.2 * first, (first, last)
    assert not torch.equal(sae.b_enc.detach(), b_gate)
