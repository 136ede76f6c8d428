"""SAEs on disk in SAELens's layout: a folder with ``cfg.json`` (SAELens's field names) and
``sae_weights.safetensors`` (W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc, b_dec, plus
``threshold`` (d_sae,) for the threshold SAEs), so SAELens's ``SAE.load_from_disk`` reads
what LatentLab writes and ``load_sae`` reads what SAELens writes.

Architectures as SAELens names them (sae_lens/saes/*.py, 6.54):
  relu -> "standard"; topk and gtopk -> "topk" (gtopk encodes as TopK at inference);
  jumprelu -> "jumprelu" (threshold = exp(log_threshold)); batchtopk -> "jumprelu" with one
  shared threshold, as SAELens saves its trained BatchTopK SAEs; mp -> "matching_pursuit"
  run for exactly k steps (max_iterations = k, no early stop), the same function as
  LatentLab's while the decoder rows have unit norm, which training keeps.
LatentLab's own config sits under the "latentlab" key (SAELens ignores it), so a LatentLab
load restores the exact class; without that key, SAELens's fields are mapped (its
apply_b_dec_to_input=False and rescale_acts_by_decoder_norm=True are folded into the weights)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.errors import LatentLabError
from engine.sae.base import ARCHITECTURES, SAEConfig, SparseAutoencoder, load_architectures

CFG_FILENAME = "cfg.json"
WEIGHTS_FILENAME = "sae_weights.safetensors"
SAELENS_LAYOUT_VERSION = "6.54.12"  # the SAELens release whose cfg.json layout we write
LATENTLAB_KEY = "latentlab"
FORMAT_VERSION = 1  # of the "latentlab" block

SAELENS_ARCH = {"relu": "standard", "topk": "topk", "gtopk": "topk", "jumprelu": "jumprelu",
                "batchtopk": "jumprelu", "mp": "matching_pursuit"}
THRESHOLD_ARCHS = ("jumprelu", "batchtopk")  # their files carry threshold (d_sae,)
KEEP_NORMALIZATION = ("none", "expected_average_only_in")  # identity in SAELens's load_from_disk


class SAEFileError(LatentLabError):
    """An SAE folder is missing, damaged, or holds something LatentLab cannot load."""


# ------------------------------------------------------------------ saving
def save_sae(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write ``sae`` into ``folder`` (created) as cfg.json + sae_weights.safetensors."""
    folder = Path(folder)
    arch = sae.cfg.arch
    if arch not in SAELENS_ARCH:
        raise SAEFileError(f"cannot save SAE architecture {arch!r} to {folder}: no SAELens layout for it")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_export_tensors(sae), str(folder / WEIGHTS_FILENAME), metadata={"format": "pt"})
    try:
        text = json.dumps(_saelens_cfg(sae), indent=2)
    except (TypeError, ValueError) as exc:
        raise SAEFileError(f"cannot write {folder / CFG_FILENAME}: field 'extra' of the SAE config "
                           f"is not JSON-serialisable ({exc})") from exc
    (folder / CFG_FILENAME).write_text(text)
    return folder


def _saelens_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    """cfg.json as SAELens writes it, plus the "latentlab" block."""
    cfg = sae.cfg
    metadata: dict[str, Any] = {"sae_lens_version": SAELENS_LAYOUT_VERSION, "sae_lens_training_version": None,
                                "model_name": cfg.model_id or None, "hook_name": cfg.hook_name or None}
    fields: dict[str, Any] = {}
    if cfg.arch in ("topk", "gtopk"):
        fields = {"k": cfg.k, "rescale_acts_by_decoder_norm": False}
    elif cfg.arch == "mp":
        fields = {"residual_threshold": 0.0, "max_iterations": cfg.k, "stop_on_duplicate_support": False}
    elif cfg.arch == "batchtopk":
        metadata.update(training_architecture="batchtopk", training_architecture_details={"k": cfg.k})
    return {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype, "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": metadata, **fields, "architecture": SAELENS_ARCH[cfg.arch],
            LATENTLAB_KEY: {"format_version": FORMAT_VERSION, "config": cfg.to_dict()}}


def _export_tensors(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """SAELens's tensors for ``sae``: W_enc, W_dec, b_enc, b_dec (+ threshold); mp is tied."""
    def out(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu").contiguous()
    tensors = {"W_enc": out(sae.W_enc), "W_dec": out(sae.W_dec), "b_enc": out(sae.b_enc), "b_dec": out(sae.b_dec)}
    arch, d_sae = sae.cfg.arch, sae.cfg.d_sae
    if arch == "jumprelu":
        log_thr = out(sae.log_threshold)
        tensors["threshold"] = log_thr.double().exp().to(log_thr.dtype)
    elif arch == "batchtopk":
        tensors["threshold"] = out(sae.threshold).to(tensors["b_enc"].dtype).expand(d_sae).clone()
    elif arch == "mp":  # SAELens's MatchingPursuitSAE has neither (W_enc is W_dec.T there)
        del tensors["W_enc"], tensors["b_enc"]
    return tensors


# ------------------------------------------------------------------ loading
def load_sae(folder: str | Path) -> SparseAutoencoder:
    """The SAE in ``folder``, saved by LatentLab (exact class) or by SAELens (mapped)."""
    folder = Path(folder)
    raw = _read_cfg(folder)
    tensors = _read_weights(folder)
    if LATENTLAB_KEY in raw:
        cfg = _latentlab_config(raw, folder)
    else:
        cfg, tensors = _from_saelens(raw, tensors, folder)
    _check_shapes(tensors, cfg, folder)
    sae = _build(cfg, folder, f"{LATENTLAB_KEY}.config.arch" if LATENTLAB_KEY in raw else "architecture")
    try:
        sae.load_state_dict(_state_dict(cfg, tensors, folder))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SAEFileError(f"{folder / WEIGHTS_FILENAME}: tensors do not fit LatentLab's {cfg.arch!r} SAE "
                           f"(cfg.json field 'architecture'): {first}") from exc
    if cfg.dtype != "float32":
        sae.to(_torch_dtype(cfg.dtype, folder))
    return sae


def _read_cfg(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise SAEFileError(f"SAE folder {folder} does not exist")
    path = folder / CFG_FILENAME
    if not path.is_file():
        raise SAEFileError(f"{path} is missing: an SAE folder needs cfg.json and {WEIGHTS_FILENAME}")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEFileError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise SAEFileError(f"{path} holds a JSON {type(raw).__name__}, not an object of fields")
    return raw


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS_FILENAME
    if not path.is_file():
        raise SAEFileError(f"{path} is missing: an SAE folder needs cfg.json and {WEIGHTS_FILENAME}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAEFileError(f"{path} is not a readable safetensors file ({exc})") from exc


def _latentlab_config(raw: dict[str, Any], folder: Path) -> SAEConfig:
    block, path = raw[LATENTLAB_KEY], folder / CFG_FILENAME
    if not isinstance(block, dict) or not isinstance(block.get("config"), dict):
        raise SAEFileError(f"{path}: field '{LATENTLAB_KEY}.config' is missing or not an object")
    version = block.get("format_version", 1)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SAEFileError(f"{path}: field '{LATENTLAB_KEY}.format_version' is {version!r}, written by a "
                           f"newer LatentLab (this one reads up to {FORMAT_VERSION})")
    data = block["config"]
    for name in ("arch", "d_in", "d_sae"):
        if name not in data:
            raise SAEFileError(f"{path}: field '{LATENTLAB_KEY}.config.{name}' is missing")
    try:
        return SAEConfig.from_dict(data)
    except TypeError as exc:
        raise SAEFileError(f"{path}: field '{LATENTLAB_KEY}.config' is malformed ({exc})") from exc


def _build(cfg: SAEConfig, folder: Path, field: str) -> SparseAutoencoder:
    load_architectures()
    if cfg.arch not in ARCHITECTURES:
        raise SAEFileError(f"{folder / CFG_FILENAME}: field {field!r} is {cfg.arch!r}, an architecture unknown "
                           f"to this LatentLab; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[cfg.arch](cfg)


def _expected_shapes(cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
    """SAELens tensor name -> shape the file must hold for ``cfg``."""
    d_in, d_sae = cfg.d_in, cfg.d_sae
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
    if cfg.arch in THRESHOLD_ARCHS:
        shapes["threshold"] = (d_sae,)
    if cfg.arch == "mp":
        del shapes["W_enc"], shapes["b_enc"]
    return shapes


def _check_shapes(tensors: dict[str, torch.Tensor], cfg: SAEConfig, folder: Path) -> None:
    path = folder / WEIGHTS_FILENAME
    for name, shape in _expected_shapes(cfg).items():
        if name not in tensors:
            raise SAEFileError(f"{path} has no tensor {name!r}, which a {cfg.arch!r} SAE needs "
                               f"(cfg.json field 'architecture')")
        got = tuple(tensors[name].shape)
        if got != shape:
            raise SAEFileError(f"{path}: tensor {name!r} has shape {got}, but cfg.json fields "
                               f"d_in={cfg.d_in}, d_sae={cfg.d_sae} need {shape}")


def _state_dict(cfg: SAEConfig, tensors: dict[str, torch.Tensor], folder: Path) -> dict[str, torch.Tensor]:
    """LatentLab's state dict from (already checked) SAELens-named tensors."""
    state = {name: tensors[name] for name in ("W_enc", "W_dec", "b_enc", "b_dec") if name in tensors}
    if cfg.arch == "jumprelu":
        thr = tensors["threshold"]
        tiny = torch.finfo(torch.float32).tiny  # SAELens allows 0 (= ReLU): keep log finite
        state["log_threshold"] = thr.double().clamp_min(tiny).log().to(thr.dtype)
    elif cfg.arch == "batchtopk":
        thr = tensors["threshold"]
        if not bool((thr == thr[0]).all()):
            raise SAEFileError(f"{folder / WEIGHTS_FILENAME}: tensor 'threshold' varies across latents, "
                               f"but a 'batchtopk' SAE has one shared threshold")
        state["threshold"] = thr[0].clone()
    elif cfg.arch == "mp":  # tied: the encoder is the decoder's transpose, b_enc unused
        state["W_enc"] = tensors["W_dec"].t().contiguous()
        state["b_enc"] = tensors["W_dec"].new_zeros(cfg.d_sae)
    return state


def _torch_dtype(name: str, folder: Path) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise SAEFileError(f"{folder / CFG_FILENAME}: field 'dtype' is {name!r}, not a torch dtype")
    return dtype


# ------------------------------------------------------------------ SAELens's own folders
def _from_saelens(raw: dict[str, Any], tensors: dict[str, torch.Tensor],
                  folder: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """SAEConfig and LatentLab-convention tensors for a folder SAELens wrote."""
    path = folder / CFG_FILENAME
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    arch = raw.get("architecture") or _pre_v6_architecture(raw)
    common = {"d_in": _int_field(raw, "d_in", path), "d_sae": _int_field(raw, "d_sae", path),
              "hook_name": str(meta.get("hook_name") or raw.get("hook_name") or raw.get("hook_point") or ""),
              "model_id": str(meta.get("model_name") or raw.get("model_name") or ""),
              "dtype": str(raw.get("dtype") or "float32").removeprefix("torch."),
              "extra": _saelens_extras(raw, arch, path)}
    _torch_dtype(common["dtype"], folder)
    tensors = dict(tensors)
    _check_scaling_factor(tensors, folder)
    if arch == "matching_pursuit":
        return _from_saelens_mp(raw, tensors, common, path)
    if arch not in ("standard", "topk", "jumprelu", "batchtopk"):
        raise SAEFileError(f"{path}: field 'architecture' is {arch!r}, which LatentLab cannot load; it reads "
                           f"SAELens's standard, topk, batchtopk, jumprelu and matching_pursuit SAEs")
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        _require(tensors, name, arch, folder)
    if not raw.get("apply_b_dec_to_input", True):
        _fold_b_dec_into_b_enc(tensors)
    if arch in ("topk", "batchtopk") and raw.get("rescale_acts_by_decoder_norm", False):
        _fold_decoder_norms(tensors)
    if arch == "standard":
        return SAEConfig(arch="relu", **common), tensors
    if arch == "topk":
        return SAEConfig(arch="topk", k=_k_field(raw, path), **common), tensors
    if arch == "batchtopk":  # a SAELens training checkpoint: one scalar topk_threshold
        _require(tensors, "topk_threshold", arch, folder)
        thr = tensors.pop("topk_threshold").to(tensors["b_enc"].dtype)
        tensors["threshold"] = thr.reshape(()).expand(common["d_sae"]).clone()
        return SAEConfig(arch="batchtopk", k=_k_field(raw, path), **common), tensors
    return _from_saelens_jumprelu(meta, tensors, common, folder)


def _from_saelens_jumprelu(meta: dict[str, Any], tensors: dict[str, torch.Tensor], common: dict[str, Any],
                           folder: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """A trained SAELens BatchTopK (saved as jumprelu, one shared threshold) -> batchtopk; else jumprelu."""
    _require(tensors, "threshold", "jumprelu", folder)
    thr = tensors["threshold"]
    details = meta.get("training_architecture_details")
    details = details if isinstance(details, dict) else {}
    shared = thr.numel() > 0 and bool((thr == thr.flatten()[0]).all())
    if meta.get("training_architecture") == "batchtopk" and shared and "k" in details:
        return SAEConfig(arch="batchtopk", k=_k_value(details["k"], folder / CFG_FILENAME), **common), tensors
    knobs = {"jumprelu_init_threshold": "jumprelu_init_threshold", "jumprelu_bandwidth": "jumprelu_bandwidth",
             "l0_coefficient": "l0_coeff"}
    trained = {ours: float(details[theirs]) for theirs, ours in knobs.items()
               if isinstance(details.get(theirs), (int, float))}
    return SAEConfig(arch="jumprelu", **trained, **common), tensors


def _from_saelens_mp(raw: dict[str, Any], tensors: dict[str, torch.Tensor], common: dict[str, Any],
                     path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """SAELens's matching_pursuit, when it runs a fixed number of steps as LatentLab's mp does."""
    if raw.get("stop_on_duplicate_support", True):
        raise SAEFileError(f"{path}: field 'stop_on_duplicate_support' is true, but LatentLab's mp SAE runs a "
                           f"fixed number of steps (it loads matching_pursuit SAEs saved with false)")
    if float(raw.get("residual_threshold", 1e-2) or 0.0) > 0:
        raise SAEFileError(f"{path}: field 'residual_threshold' is above 0, but LatentLab's mp SAE runs a "
                           f"fixed number of steps (it loads matching_pursuit SAEs saved with 0)")
    for name in ("W_dec", "b_dec"):
        _require(tensors, name, "matching_pursuit", path.parent)
    if not raw.get("apply_b_dec_to_input", True):  # SAELens then neither centres nor adds b_dec
        tensors["b_dec"] = torch.zeros_like(tensors["b_dec"])
    steps = raw.get("max_iterations")
    k = common["d_in"] if steps is None else _k_value(steps, path)
    return SAEConfig(arch="mp", k=k, **common), tensors


def _pre_v6_architecture(raw: dict[str, Any]) -> str:
    """SAELens < 6 wrote no "architecture": TopK when activation_fn says so, else standard."""
    act = raw.get("activation_fn_str", raw.get("activation_fn"))
    kwargs = raw.get("activation_fn_kwargs") or {}
    if act == "topk" and isinstance(kwargs, dict) and kwargs.get("k") is not None:
        raw.setdefault("k", kwargs["k"])
        return "topk"
    return "standard"


def _saelens_extras(raw: dict[str, Any], arch: str, path: Path) -> dict[str, Any]:
    """SAELens settings kept for the record; refuses normalisations LatentLab cannot compute."""
    norm = raw.get("normalize_activations", "none")
    norm = {False: "none", True: "expected_average_only_in", None: "none"}.get(norm, norm)
    if norm not in KEEP_NORMALIZATION:
        raise SAEFileError(f"{path}: field 'normalize_activations' is {norm!r}; LatentLab loads SAEs whose "
                           f"inputs need no run-time normalisation ('none' or 'expected_average_only_in')")
    if raw.get("finetuning_scaling_factor"):
        raise SAEFileError(f"{path}: field 'finetuning_scaling_factor' is true, which LatentLab cannot apply")
    return {"saelens": {"architecture": arch, "normalize_activations": norm,
                        "reshape_activations": raw.get("reshape_activations", "none")}}


def _check_scaling_factor(tensors: dict[str, torch.Tensor], folder: Path) -> None:
    """Older SAELens files may carry a scaling_factor; all ones is a no-op SAELens drops."""
    for name in ("scaling_factor", "finetuning_scaling_factor"):
        t = tensors.pop(name, None)
        if t is not None and not bool((t == 1).all()):
            raise SAEFileError(f"{folder / WEIGHTS_FILENAME}: tensor {name!r} is not all ones, a fine-tuning "
                               f"scale LatentLab cannot apply")


def _require(tensors: dict[str, torch.Tensor], name: str, arch: str, folder: Path) -> None:
    if name not in tensors:
        raise SAEFileError(f"{folder / WEIGHTS_FILENAME} has no tensor {name!r}, which a SAELens {arch!r} SAE "
                           f"needs (cfg.json field 'architecture')")


def _int_field(raw: dict[str, Any], name: str, path: Path) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SAEFileError(f"{path}: field {name!r} is {'missing' if value is None else repr(value)}"
                           f"; it must be a positive integer")
    return value


def _k_field(raw: dict[str, Any], path: Path) -> int:
    return _k_value(raw.get("k", 100), path)  # SAELens's TopKSAEConfig default is 100


def _k_value(value: Any, path: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or not math.isfinite(value):
        raise SAEFileError(f"{path}: field 'k' is {value!r}; it must be a positive number")
    return max(1, round(value))


@torch.no_grad()
def _fold_b_dec_into_b_enc(t: dict[str, torch.Tensor]) -> None:
    """SAELens without apply_b_dec_to_input: x @ W_enc + b_enc == (x - b_dec) @ W_enc + b_enc'."""
    b_enc = t["b_enc"].double() + t["b_dec"].double() @ t["W_enc"].double()
    t["b_enc"] = b_enc.to(t["b_enc"].dtype)


@torch.no_grad()
def _fold_decoder_norms(t: dict[str, torch.Tensor]) -> None:
    """SAELens's rescale_acts_by_decoder_norm made explicit: scale pre-activations by the decoder
    row norms and use unit decoder rows (SAELens's own _fold_norm_topk)."""
    norms = t["W_dec"].double().norm(dim=1)  # (d_sae,)
    t["W_enc"] = (t["W_enc"].double() * norms).to(t["W_enc"].dtype)
    t["b_enc"] = (t["b_enc"].double() * norms).to(t["b_enc"].dtype)
    t["W_dec"] = (t["W_dec"].double() / norms[:, None]).to(t["W_dec"].dtype)
