"""SAE folders in SAELens's layout: LatentLab round trips for every architecture, folders written
by hand exactly as SAELens 6.54 writes them (cfg.json + sae_weights.safetensors), and the
errors a broken folder gives. The outputs of SAELens's folders are checked against a small
re-implementation of SAELens's encode/decode (sae_lens/saes/*.py); tests/test_sae_saelens.py
checks against SAELens itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import LatentLabError
from engine.sae.base import ARCHITECTURES, SAEConfig, build_sae, load_architectures
from engine.sae.io import SAEFileError, load_sae, save_sae

load_architectures()
ALL_ARCHS = ["relu", "topk", "batchtopk", "jumprelu", "mp", "gtopk"]
SAELENS_NAME = {"relu": "standard", "topk": "topk", "gtopk": "topk", "jumprelu": "jumprelu",
                "batchtopk": "jumprelu", "mp": "matching_pursuit"}
D_IN, D_SAE, K = 16, 48, 4


def needs(arch: str) -> None:
    if arch not in ARCHITECTURES:
        pytest.skip(f"engine/sae/{arch}.py is not there yet")


def random_sae(arch: str, seed: int = 0):
    """An SAE of ``arch`` with every parameter moved off its initial value."""
    needs(arch)
    torch.manual_seed(seed)
    sae = build_sae(SAEConfig(arch=arch, d_in=D_IN, d_sae=D_SAE, k=K, hook_name="model.layers.3",
                              model_id="tiny-llama", extra={"note": "test"}))
    with torch.no_grad():
        sae.b_dec.copy_(0.3 * torch.randn(D_IN))
        if arch != "mp":  # mp's encoder is the decoder, W_enc is kept equal to W_dec.T
            sae.W_enc.add_(0.2 * torch.randn(D_IN, D_SAE))
            sae.b_enc.copy_(0.1 * torch.randn(D_SAE))
        if arch == "jumprelu":
            sae.log_threshold.copy_(torch.empty(D_SAE).uniform_(0.05, 0.6).log())
        if arch == "batchtopk":
            sae.threshold.fill_(0.3)
    return sae


def inputs(seed: int = 1, n: int = 64) -> torch.Tensor:
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed))


def assert_same_outputs(a, b, x: torch.Tensor, atol: float = 1e-6) -> None:
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
        torch.testing.assert_close(a.encode(x), b.encode(x), atol=atol, rtol=0)
    torch.testing.assert_close(out_a.codes, out_b.codes, atol=atol, rtol=0)
    torch.testing.assert_close(out_a.x_hat, out_b.x_hat, atol=atol, rtol=0)


# ------------------------------------------------------------------ LatentLab round trips
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_round_trip_restores_class_config_and_outputs(arch, tmp_path):
    sae = random_sae(arch)
    assert save_sae(sae, tmp_path / "sae") == tmp_path / "sae"
    loaded = load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae)
    assert loaded.cfg.to_dict() == sae.cfg.to_dict()
    x = inputs()
    assert_same_outputs(sae, loaded, x)
    codes = sae(x).codes
    assert (codes > 0).any() and (codes == 0).any()  # a real sparse code, not all or nothing
    for name, value in sae.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_files_use_saelens_names(arch, tmp_path):
    sae = random_sae(arch)
    save_sae(sae, tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == SAELENS_NAME[arch]
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (D_IN, D_SAE, "float32")
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["hook_name"] == "model.layers.3" and cfg["metadata"]["sae_lens_version"]
    assert cfg["latentlab"]["config"]["arch"] == arch
    tensors = load_file(tmp_path / "sae_weights.safetensors")
    names = {"W_dec", "b_dec"} | ({"W_enc", "b_enc"} if arch != "mp" else set())
    names |= {"threshold"} if arch in ("jumprelu", "batchtopk") else set()
    assert set(tensors) == names
    assert tensors["W_dec"].shape == (D_SAE, D_IN)
    if arch != "mp":
        assert tensors["W_enc"].shape == (D_IN, D_SAE)
        torch.testing.assert_close(tensors["W_enc"], sae.W_enc.detach())
    if arch in ("topk", "gtopk"):
        assert cfg["k"] == K and cfg["rescale_acts_by_decoder_norm"] is False
    if arch == "jumprelu":
        torch.testing.assert_close(tensors["threshold"], sae.threshold.detach())
    if arch == "batchtopk":
        assert torch.equal(tensors["threshold"], torch.full((D_SAE,), 0.3))
    if arch == "mp":
        assert (cfg["max_iterations"], cfg["residual_threshold"], cfg["stop_on_duplicate_support"]) == (K, 0.0, False)


def test_save_overwrites_and_loaded_sae_trains(tmp_path):
    needs("topk")
    save_sae(random_sae("topk", seed=0), tmp_path)
    second = random_sae("topk", seed=5)
    save_sae(second, tmp_path)
    loaded = load_sae(tmp_path)
    assert_same_outputs(second, loaded, inputs())
    assert all(p.requires_grad for p in loaded.parameters())


# ------------------------------------------------------------------ SAELens's own folders
def write_saelens(folder: Path, cfg: dict, tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "sae_weights.safetensors")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def saelens_cfg(architecture: str, **fields) -> dict:
    """cfg.json exactly as SAELens 6.54.12's SAE.save_model writes it."""
    return {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12",
                         "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_pre"},
            **fields, "architecture": architecture}


def saelens_tensors(seed: int = 3, dec_scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(D_SAE, D_IN, generator=g)
    W_dec = dec_scale * W_dec / W_dec.norm(dim=1, keepdim=True) * torch.empty(D_SAE, 1).uniform_(0.5, 1.5, generator=g)
    return {"W_enc": W_dec.t() + 0.2 * torch.randn(D_IN, D_SAE, generator=g), "W_dec": W_dec,
            "b_enc": 0.1 * torch.randn(D_SAE, generator=g), "b_dec": 0.3 * torch.randn(D_IN, generator=g)}


def sl_pre(x, t, apply_b_dec=True):
    return (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]


def sl_standard(x, t, apply_b_dec=True):
    acts = torch.relu(sl_pre(x, t, apply_b_dec))
    return acts, acts @ t["W_dec"] + t["b_dec"]


def sl_topk(x, t, k, rescale):
    pre = sl_pre(x, t)
    norms = t["W_dec"].norm(dim=-1)
    if rescale:
        pre = pre * norms
    vals, idx = pre.topk(k, dim=-1)
    acts = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
    return acts, (acts / norms if rescale else acts) @ t["W_dec"] + t["b_dec"]


def sl_jumprelu(x, t):
    pre = sl_pre(x, t)
    acts = pre.relu() * (pre > t["threshold"])
    return acts, acts @ t["W_dec"] + t["b_dec"]


def sl_matching_pursuit(x, t, steps, apply_b_dec=True):
    """SAELens's _encode_matching_pursuit with no early stop."""
    r = x - t["b_dec"] * apply_b_dec
    acts = torch.zeros(len(x), D_SAE)
    for _ in range(steps):
        idx = (r @ t["W_dec"].T).relu().max(dim=1, keepdim=True).indices
        atom = t["W_dec"][idx.squeeze(1)]
        val = (r * atom).sum(-1, keepdim=True).relu()
        acts.scatter_add_(1, idx, val)
        r = r - val * atom
    return acts, acts @ t["W_dec"] + t["b_dec"] * apply_b_dec


def check_outputs(sae, x, acts, x_hat, atol=1e-5):
    with torch.no_grad():
        out = sae(x)
    torch.testing.assert_close(out.codes, acts, atol=atol, rtol=0)
    torch.testing.assert_close(out.x_hat, x_hat, atol=atol, rtol=0)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_loads_saelens_standard_as_relu(apply_b_dec, tmp_path):
    needs("relu")
    t = saelens_tensors()
    write_saelens(tmp_path, saelens_cfg("standard", apply_b_dec_to_input=apply_b_dec), t)
    sae = load_sae(tmp_path)
    assert sae.architecture == "relu" and sae.cfg.hook_name == "blocks.3.hook_resid_pre"
    assert sae.cfg.model_id == "gpt2"
    x = inputs()
    check_outputs(sae, x, *sl_standard(x, t, apply_b_dec))


@pytest.mark.parametrize("rescale", [False, True])
def test_loads_saelens_topk(rescale, tmp_path):
    needs("topk")
    t = saelens_tensors(dec_scale=0.1 if rescale else 1.0)  # a training checkpoint's small decoder
    write_saelens(tmp_path, saelens_cfg("topk", k=5, rescale_acts_by_decoder_norm=rescale), t)
    sae = load_sae(tmp_path)
    assert sae.architecture == "topk" and sae.cfg.k == 5
    x = inputs()
    check_outputs(sae, x, *sl_topk(x, t, 5, rescale))


def test_loads_saelens_jumprelu_with_zero_and_negative_thresholds(tmp_path):
    needs("jumprelu")
    t = saelens_tensors()
    t["threshold"] = torch.linspace(-0.2, 0.8, D_SAE)
    cfg = saelens_cfg("jumprelu")
    cfg["metadata"].update(training_architecture="jumprelu",
                           training_architecture_details={"jumprelu_bandwidth": 0.05, "l0_coefficient": 2.0})
    write_saelens(tmp_path, cfg, t)
    sae = load_sae(tmp_path)
    assert sae.architecture == "jumprelu"
    assert sae.cfg.jumprelu_bandwidth == 0.05 and sae.cfg.l0_coeff == 2.0
    assert torch.isfinite(sae.log_threshold).all()
    x = inputs()
    check_outputs(sae, x, *sl_jumprelu(x, t))


def test_loads_saelens_trained_batchtopk_as_batchtopk(tmp_path):
    """SAELens's BatchTopKTrainingSAE.save_inference_model: "jumprelu", one shared threshold."""
    needs("batchtopk")
    t = saelens_tensors()
    t["threshold"] = torch.full((D_SAE,), 0.25)
    cfg = saelens_cfg("jumprelu")
    cfg["metadata"].update(training_architecture="batchtopk",
                           training_architecture_details={"decoder_init_norm": 0.1, "k": 6,
                                                          "rescale_acts_by_decoder_norm": True,
                                                          "topk_threshold_lr": 0.01})
    write_saelens(tmp_path, cfg, t)
    sae = load_sae(tmp_path)
    assert sae.architecture == "batchtopk" and sae.cfg.k == 6
    x = inputs()
    check_outputs(sae, x, *sl_jumprelu(x, t))


def test_loads_saelens_batchtopk_training_checkpoint(tmp_path):
    """SAELens's BatchTopKTrainingSAE.save_model: "batchtopk" with a float64 topk_threshold."""
    needs("batchtopk")
    t = saelens_tensors(dec_scale=0.1)
    cfg = saelens_cfg("batchtopk", decoder_init_norm=0.1, k=6, use_sparse_activations=False,
                      aux_loss_coefficient=1.0, rescale_acts_by_decoder_norm=True, topk_threshold_lr=0.01)
    write_saelens(tmp_path, cfg, {**t, "topk_threshold": torch.tensor(0.02, dtype=torch.float64)})
    sae = load_sae(tmp_path)
    assert sae.architecture == "batchtopk" and sae.cfg.k == 6
    norms = t["W_dec"].norm(dim=1)
    pre = sl_pre(inputs(), t) * norms  # SAELens's rescaled pre-activations
    acts = pre.relu() * (pre > 0.02)
    check_outputs(sae, inputs(), acts, (acts / norms) @ t["W_dec"] + t["b_dec"])


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_loads_saelens_matching_pursuit_without_early_stop(apply_b_dec, tmp_path):
    needs("mp")
    t = saelens_tensors()
    t["W_dec"] = t["W_dec"] / t["W_dec"].norm(dim=1, keepdim=True)  # SAELens's MP assumes unit rows
    write_saelens(tmp_path, saelens_cfg("matching_pursuit", apply_b_dec_to_input=apply_b_dec,
                                        residual_threshold=0.0, max_iterations=6, stop_on_duplicate_support=False),
                  {"W_dec": t["W_dec"], "b_dec": t["b_dec"]})
    sae = load_sae(tmp_path)
    assert sae.architecture == "mp" and sae.cfg.k == 6
    x = inputs()
    check_outputs(sae, x, *sl_matching_pursuit(x, t, 6, apply_b_dec))


def test_loads_pre_v6_saelens_config(tmp_path):
    """SAELens < 6 wrote hook_point and activation_fn_str and no architecture."""
    needs("topk")
    t = saelens_tensors()
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "torch.float32", "hook_point": "blocks.1.hook_resid_post",
           "model_name": "gpt2", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3},
           "normalize_activations": False, "apply_b_dec_to_input": True}
    write_saelens(tmp_path, cfg, t)
    sae = load_sae(tmp_path)
    assert sae.architecture == "topk" and sae.cfg.k == 3 and sae.cfg.hook_name == "blocks.1.hook_resid_post"
    x = inputs()
    check_outputs(sae, x, *sl_topk(x, t, 3, False))


def test_saelens_folder_survives_a_latentlab_round_trip(tmp_path):
    needs("topk")
    t = saelens_tensors(dec_scale=0.1)
    write_saelens(tmp_path / "a", saelens_cfg("topk", k=5, rescale_acts_by_decoder_norm=True), t)
    first = load_sae(tmp_path / "a")
    second = load_sae(save_sae(first, tmp_path / "b"))
    assert second.cfg.extra["saelens"]["architecture"] == "topk"
    assert_same_outputs(first, second, inputs())


# ------------------------------------------------------------------ broken folders
def broken(tmp_path: Path, mutate) -> Path:
    """A good relu/standard folder after ``mutate(folder, cfg, tensors)``."""
    folder = tmp_path / "sae"
    cfg, t = saelens_cfg("standard"), saelens_tensors()
    mutate(folder, cfg, t)
    if cfg is not None:
        write_saelens(folder, cfg, t)
    return folder


def expect_error(folder: Path, *words: str) -> str:
    with pytest.raises(SAEFileError) as info:
        load_sae(folder)
    message = str(info.value)
    assert isinstance(info.value, LatentLabError) and "\n" not in message
    for word in words:
        assert word in message, message
    return message


def test_missing_folder(tmp_path):
    expect_error(tmp_path / "nowhere", "nowhere", "does not exist")


def test_missing_cfg_and_weights(tmp_path):
    folder = broken(tmp_path, lambda f, c, t: None)
    (folder / "cfg.json").unlink()
    expect_error(folder, "cfg.json", "missing")
    folder = broken(tmp_path, lambda f, c, t: None)
    (folder / "sae_weights.safetensors").unlink()
    expect_error(folder, "sae_weights.safetensors", "missing")


def test_unreadable_files(tmp_path):
    folder = broken(tmp_path, lambda f, c, t: None)
    (folder / "cfg.json").write_text("{not json")
    expect_error(folder, "cfg.json", "not valid JSON")
    folder = broken(tmp_path, lambda f, c, t: None)
    (folder / "sae_weights.safetensors").write_bytes(b"garbage")
    expect_error(folder, "sae_weights.safetensors", "safetensors")


def test_unknown_architecture(tmp_path):
    folder = broken(tmp_path, lambda f, c, t: c.update(architecture="gated"))
    expect_error(folder, "cfg.json", "'architecture'", "gated")


def test_unknown_latentlab_architecture(tmp_path):
    needs("relu")
    save_sae(random_sae("relu"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["latentlab"]["config"]["arch"] = "quantum"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    expect_error(tmp_path, "cfg.json", "latentlab.config.arch", "quantum")


def test_newer_latentlab_format(tmp_path):
    needs("relu")
    save_sae(random_sae("relu"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["latentlab"]["format_version"] = 99
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    expect_error(tmp_path, "cfg.json", "format_version", "newer")


def test_shape_mismatch_names_tensor_and_fields(tmp_path):
    folder = broken(tmp_path, lambda f, c, t: c.update(d_in=D_IN + 1))
    expect_error(folder, "sae_weights.safetensors", "'W_enc'", "d_in=17", f"({D_IN}, {D_SAE})")


def test_latentlab_shape_mismatch(tmp_path):
    needs("topk")
    save_sae(random_sae("topk"), tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["latentlab"]["config"]["d_sae"] = D_SAE * 2
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    expect_error(tmp_path, "sae_weights.safetensors", "d_sae=96")


def test_missing_tensor_and_field(tmp_path):
    folder = broken(tmp_path, lambda f, c, t: t.pop("b_enc"))
    expect_error(folder, "sae_weights.safetensors", "'b_enc'")
    folder = broken(tmp_path, lambda f, c, t: c.pop("d_sae"))
    expect_error(folder, "cfg.json", "'d_sae'", "missing")
    folder = broken(tmp_path, lambda f, c, t: c.update(architecture="jumprelu"))
    expect_error(folder, "sae_weights.safetensors", "'threshold'")


def test_unsupported_saelens_settings(tmp_path):
    folder = broken(tmp_path, lambda f, c, t: c.update(normalize_activations="layer_norm"))
    expect_error(folder, "cfg.json", "normalize_activations", "layer_norm")
    mp = {"architecture": "matching_pursuit", "stop_on_duplicate_support": True, "max_iterations": 4}
    folder = broken(tmp_path, lambda f, c, t: c.update(mp))
    expect_error(folder, "cfg.json", "stop_on_duplicate_support")


def test_expected_average_normalisation_is_identity_as_in_saelens(tmp_path):
    """SAELens's load_from_disk leaves expected_average_only_in unfolded and computes no scaling."""
    needs("relu")
    t = saelens_tensors()
    write_saelens(tmp_path, saelens_cfg("standard", normalize_activations="expected_average_only_in"), t)
    sae = load_sae(tmp_path)
    assert sae.cfg.extra["saelens"]["normalize_activations"] == "expected_average_only_in"
    x = inputs()
    check_outputs(sae, x, *sl_standard(x, t))


def test_jumprelu_log_threshold_comes_back_within_one_ulp(tmp_path):
    """The file holds threshold = exp(log_threshold) (SAELens's name); the log comes back to
    within one float32 step, so a resumed run continues from the same parameters."""
    needs("jumprelu")
    sae = random_sae("jumprelu")
    save_sae(sae, tmp_path)
    before, after = sae.log_threshold.detach(), load_sae(tmp_path).log_threshold.detach()
    inf = torch.tensor(math.inf)
    assert ((after >= torch.nextafter(before, -inf)) & (after <= torch.nextafter(before, inf))).all()
