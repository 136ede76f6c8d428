"""SAEs on disk in SAELens's layout: a folder with ``cfg.json`` (SAELens's field names) and
``sae_weights.safetensors`` (W_enc (d_in, d_sae), W_dec (d_sae, d_in), b_enc, b_dec, plus
``threshold`` (d_sae,) for the threshold SAEs), so SAELens's ``SAE.load_from_disk`` reads
what LatentLab writes and ``load_sae`` reads what SAELens writes. What differs between
architectures (their SAELens name and fields, the tensors in the file, which SAELens
folders they read) is said by each architecture's class (``SparseAutoencoder``'s "files"
part); an architecture SAELens lacks is written under its LatentLab name.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.sae.base import (
    ARCHITECTURES,
    SAEConfig,
    SparseAutoencoder,
    architectures,
    load_architectures,
)
from engine.sae.formats.common import read_json
from engine.sae.formats.detect import detect_sae_format
from engine.sae.formats.dictionary_learning import read_dictionary_learning
from engine.sae.formats.hub import resolve_sae_path
from engine.sae.formats.overcomplete import read_overcomplete
from engine.sae.formats.sparsify import read_sparsify
from engine.sae.saelens import CFG_FILENAME, WEIGHTS_FILENAME, SAEFileError, SAELensFile

SAELENS_LAYOUT_VERSION = "6.54.12"  # the SAELens release whose cfg.json layout we write
LATENTLAB_KEY = "latentlab"
FORMAT_VERSION = 1  # of the "latentlab" block
KEEP_NORMALIZATION = ("none", "expected_average_only_in")  # identity in SAELens's load_from_disk


# ------------------------------------------------------------------ saving
def save_sae(sae: SparseAutoencoder, folder: str | Path) -> Path:
    """Write ``sae`` into ``folder`` (created) as cfg.json + sae_weights.safetensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sae.file_tensors(), str(folder / WEIGHTS_FILENAME), metadata={"format": "pt"})
    try:
        text = json.dumps(_saelens_cfg(sae), indent=2)
    except (TypeError, ValueError) as exc:
        raise SAEFileError(f"cannot write {folder / CFG_FILENAME}: field 'extra' of the SAE config "
                           f"is not JSON-serialisable ({exc})") from exc
    (folder / CFG_FILENAME).write_text(text)
    return folder


def _saelens_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    """cfg.json as SAELens writes it, plus the "latentlab" block; an architecture SAELens
    lacks is written under its own name (SAELens will not load it, LatentLab will)."""
    cfg = sae.cfg
    metadata: dict[str, Any] = {"sae_lens_version": SAELENS_LAYOUT_VERSION, "sae_lens_training_version": None,
                                "model_name": cfg.model_id or None, "hook_name": cfg.hook_name or None,
                                **sae.saelens_metadata()}
    return {"d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype, "device": "cpu",
            "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
            "metadata": metadata, **sae.saelens_fields(),
            "architecture": type(sae).saelens_architecture or cfg.arch,
            LATENTLAB_KEY: {"format_version": FORMAT_VERSION, "config": cfg.to_dict()}}


# ------------------------------------------------------------------ loading
READERS: dict[str, Callable[[Path], tuple[SAEConfig, dict[str, torch.Tensor]]]] = {
    "sparsify": read_sparsify, "dictionary_learning": read_dictionary_learning, "overcomplete": read_overcomplete}


def load_sae(folder: str | Path) -> SparseAutoencoder:
    """The SAE in ``folder``, whichever library wrote it (``detect_sae_format``): LatentLab
    (exact class), SAELens, EleutherAI sparsify, dictionary_learning or overcomplete (mapped
    onto the LatentLab architecture computing the same codes); ``saelens:RELEASE/SAE_ID`` and
    ``hf:REPO/PATH`` name a folder in the local Hugging Face cache."""
    folder = resolve_sae_path(folder)
    fmt = detect_sae_format(folder)
    if fmt in READERS:
        cfg, tensors = READERS[fmt](folder)
        return _build(cfg, tensors, folder, folder, "the file's layout")
    raw = _read_cfg(folder)
    tensors = _read_weights(folder)
    if LATENTLAB_KEY in raw:
        cfg = _latentlab_config(raw, folder)
    else:
        cfg, tensors = _from_saelens(raw, tensors, folder)
    field = f"{LATENTLAB_KEY}.config.arch" if LATENTLAB_KEY in raw else "architecture"
    return _build(cfg, tensors, folder, folder / WEIGHTS_FILENAME, f"cfg.json field {field!r}")


def _build(cfg: SAEConfig, tensors: dict[str, torch.Tensor], folder: Path, weights: Path,
           says: str) -> SparseAutoencoder:
    """The SAE of ``cfg`` holding ``tensors`` (LatentLab's file convention, shape-checked)."""
    cls = _architecture(cfg, folder, says)
    _check_shapes(tensors, cfg, cls.file_shapes(cfg), folder)
    sae = cls(cfg)
    try:
        sae.load_state_dict(cls.state_from_file(cfg, tensors, weights))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise SAEFileError(f"{weights}: tensors do not fit LatentLab's {cfg.arch!r} SAE ({says}): {first}") from exc
    if cfg.dtype != "float32":
        sae.to(_torch_dtype(cfg.dtype, folder))
    return sae


def _read_cfg(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise SAEFileError(f"SAE folder {folder} does not exist")
    path = folder / CFG_FILENAME
    if not path.is_file():
        raise SAEFileError(f"{path} is missing: an SAE folder needs cfg.json and {WEIGHTS_FILENAME}")
    return read_json(path)


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


def _architecture(cfg: SAEConfig, folder: Path, says: str) -> type[SparseAutoencoder]:
    known = architectures()
    if cfg.arch not in known:
        raise SAEFileError(f"{folder}: {says} names architecture {cfg.arch!r}, unknown to this LatentLab; "
                           f"known: {', '.join(known)}")
    return ARCHITECTURES[cfg.arch]


def _check_shapes(tensors: dict[str, torch.Tensor], cfg: SAEConfig, shapes: dict[str, tuple[int, ...]],
                  folder: Path) -> None:
    path = folder / WEIGHTS_FILENAME
    for name, shape in shapes.items():
        if name not in tensors:
            raise SAEFileError(f"{path} has no tensor {name!r}, which a {cfg.arch!r} SAE needs "
                               f"(cfg.json field 'architecture')")
        got = tuple(tensors[name].shape)
        if got != shape:
            raise SAEFileError(f"{path}: tensor {name!r} has shape {got}, but cfg.json fields "
                               f"d_in={cfg.d_in}, d_sae={cfg.d_sae} need {shape}")


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
    file = SAELensFile(arch, raw, meta, tensors, common, folder)
    for cls in _readers(arch):
        found = cls.from_saelens(file)
        if found is not None:
            return found
    names = sorted({name for cls in ARCHITECTURES.values() for name in cls.saelens_reads})
    raise SAEFileError(f"{path}: field 'architecture' is {arch!r}, which LatentLab cannot load; it reads "
                       f"SAELens's {', '.join(names) or 'no'} SAEs")


def _readers(arch: str) -> list[type[SparseAutoencoder]]:
    """The architectures that read SAELens's ``arch``, highest priority first."""
    load_architectures()
    readers = [cls for cls in ARCHITECTURES.values() if arch in cls.saelens_reads]
    return sorted(readers, key=lambda cls: -cls.saelens_reads[arch])


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


def _int_field(raw: dict[str, Any], name: str, path: Path) -> int:
    value = raw.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SAEFileError(f"{path}: field {name!r} is {'missing' if value is None else repr(value)}"
                           f"; it must be a positive integer")
    return value
