"""saprmarks/dictionary_learning SAEs (PyPI dictionary-learning; ``trainSAE`` writes ae.pt, the
state dict, and config.json, ``{"trainer": {..., "dict_class": ...}, "buffer": {...}}``), loaded
with ``weights_only=True``. Each dictionary class maps onto a LatentLab architecture exactly:

  AutoEncoder             relu: ReLU(encoder(x - bias)), decoder(f) + bias
  AutoEncoderNew          relu: ReLU(encoder(x)), decoder(f) (decoder's bias folded into b_enc)
  AutoEncoderTopK         topk: top-k of ReLU(encoder(x - b_dec)) (its inference default)
  BatchTopKSAE,           batchtopk: ReLU(pre) where above the learnt scalar threshold
  MatryoshkaBatchTopKSAE    (their inference default; the Matryoshka groups only shape training)
  JumpReluAutoEncoder     jumprelu: pre * (pre > threshold) with pre = x @ W_enc + b_enc (b_dec
                          not subtracted: folded into b_enc)
  GatedAutoEncoder        gated: 1[h + gate_bias > 0] * ReLU(h * exp(r_mag) + mag_bias),
                          h = encoder(x - decoder_bias)

With normalize_activations, trainSAE folds the norm factor into the saved weights
(``scale_biases``), so ae.pt reads raw activations; config.json's norm_factor is reported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.sae.base import SAEConfig
from engine.sae.formats.common import (
    bias_without_b_dec,
    check_shapes,
    dtype_name,
    floats,
    need,
    positive_int,
    read_json,
    read_state_dict,
    shape_of,
)
from engine.sae.formats.detect import DICTIONARY_LEARNING_WEIGHTS
from engine.sae.saelens import SAEFileError

CONFIG = "config.json"
ARCH = {"AutoEncoder": "relu", "AutoEncoderNew": "relu", "AutoEncoderTopK": "topk", "BatchTopKSAE": "batchtopk",
        "MatryoshkaBatchTopKSAE": "batchtopk", "JumpReluAutoEncoder": "jumprelu", "GatedAutoEncoder": "gated"}


def read_dictionary_learning(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """The config and LatentLab-convention tensors of ae.pt (``path``: the file or its folder)."""
    path = path / DICTIONARY_LEARNING_WEIGHTS if path.is_dir() else path
    if not path.is_file():
        raise SAEFileError(f"{path} is missing")
    config = read_json(path.parent / CONFIG, required=False)
    trainer = config.get("trainer") if isinstance(config.get("trainer"), dict) else {}
    state = read_state_dict(path)
    cls = trainer.get("dict_class") or _class_from_keys(state, path)
    if cls not in ARCH:
        raise SAEFileError(f"{path.parent / CONFIG}: field 'trainer.dict_class' is {cls!r}, a dictionary "
                           f"LatentLab cannot read; it reads {', '.join(ARCH)}")
    tensors, k = _gated(state, path) if cls == "GatedAutoEncoder" else _tensors(cls, state, path)
    d_in, d_sae = tensors["W_enc"].shape
    extra = {"format": {"name": "dictionary_learning", "dict_class": cls,
                        "normalisation": _normalisation(trainer),
                        "trainer_class": trainer.get("trainer_class")}}
    cfg = SAEConfig(arch=ARCH[cls], d_in=d_in, d_sae=d_sae, hook_name=_hook(trainer),
                    model_id=str(trainer.get("lm_name") or ""), dtype=dtype_name(tensors["W_enc"]), extra=extra)
    if k is not None:
        cfg.k = min(positive_int(k, f"{path}: tensor 'k'"), d_sae)
    elif isinstance(trainer.get("k"), int):
        cfg.k = min(trainer["k"], d_sae)
    return cfg, tensors


def _tensors(cls: str, state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """LatentLab's W_enc, b_enc, W_dec, b_dec (+ threshold) from the class's state dict, and its k."""
    what = f"a dictionary_learning {cls}"
    if cls in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):  # nn.Parameters in LatentLab's orientation
        need(state, ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"), path, what)
        d_in, d_sae = shape_of(state, "W_enc", 2, path)
        W_enc, b_enc, W_dec, b_dec, thr = floats(*(state[n] for n in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")))  # noqa: N806
    else:  # nn.Linear encoder (d_sae, d_in) and decoder (d_in, d_sae)
        b_dec_name = {"AutoEncoder": "bias", "AutoEncoderNew": "decoder.bias"}.get(cls, "b_dec")
        need(state, ("encoder.weight", "encoder.bias", "decoder.weight", b_dec_name), path, what)
        d_sae, d_in = shape_of(state, "encoder.weight", 2, path)
        W, b_enc, D, b_dec = floats(*(state[n] for n in ("encoder.weight", "encoder.bias", "decoder.weight", b_dec_name)))  # noqa: N806
        W_enc, W_dec = W.t().contiguous(), D.t().contiguous()  # noqa: N806
        thr = floats(state["threshold"])[0] if "threshold" in state else None
    check_shapes({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec},
                 {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}, path)
    if cls in ("AutoEncoderNew", "JumpReluAutoEncoder"):  # their encoders read x, not x - b_dec
        b_enc = bias_without_b_dec(b_enc, W_enc, b_dec)
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}
    if ARCH[cls] == "jumprelu":
        check_shapes({"threshold": thr}, {"threshold": (d_sae,)}, path)
        tensors["threshold"] = thr
    elif ARCH[cls] == "batchtopk":
        need(state, ("threshold", "k"), path, what)
        if thr.numel() != 1:
            raise SAEFileError(f"{path}: tensor 'threshold' has shape {tuple(thr.shape)}, not one number")
        tensors["threshold"] = thr.reshape(()).expand(d_sae).clone()
    elif ARCH[cls] == "topk":
        need(state, ("k",), path, what)
    return tensors, state.get("k")


def _gated(state: dict[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], None]:
    """SAELens-named gated tensors (W_enc, W_dec, b_dec, b_gate, b_mag, r_mag) of a GatedAutoEncoder."""
    names = ("encoder.weight", "decoder.weight", "decoder_bias", "gate_bias", "mag_bias", "r_mag")
    need(state, names, path, "a dictionary_learning GatedAutoEncoder")
    d_sae, d_in = shape_of(state, "encoder.weight", 2, path)
    W, D, b_dec, b_gate, b_mag, r_mag = floats(*(state[n] for n in names))  # noqa: N806
    tensors = {"W_enc": W.t().contiguous(), "W_dec": D.t().contiguous(), "b_dec": b_dec, "b_gate": b_gate,
               "b_mag": b_mag, "r_mag": r_mag}
    check_shapes(tensors, {"W_dec": (d_sae, d_in), "b_dec": (d_in,), "b_gate": (d_sae,), "b_mag": (d_sae,),
                           "r_mag": (d_sae,)}, path)
    return tensors, None


def _class_from_keys(state: dict[str, torch.Tensor], path: Path) -> str:
    """The dictionary class a state dict's keys say, when config.json does not."""
    keys = set(state)
    if "r_mag" in keys:
        return "GatedAutoEncoder"
    if "group_sizes" in keys:
        return "MatryoshkaBatchTopKSAE"
    if {"W_enc", "threshold"} <= keys:
        return "JumpReluAutoEncoder"
    if "bias" in keys and "encoder.weight" in keys:
        return "AutoEncoder"
    if "decoder.bias" in keys:
        return "AutoEncoderNew"
    if "k" in keys:
        raise SAEFileError(f"{path}: a top-k dictionary without {path.parent / CONFIG} to say whether it is an "
                           f"AutoEncoderTopK or a BatchTopKSAE (field 'trainer.dict_class')")
    raise SAEFileError(f"{path} holds no dictionary_learning SAE LatentLab knows (tensors: "
                       f"{', '.join(sorted(keys)[:10])})")


def _hook(trainer: dict[str, Any]) -> str:
    """The hook point config.json names: the submodule, else the layer."""
    if trainer.get("submodule_name"):
        return str(trainer["submodule_name"])
    return f"layer {trainer['layer']}" if trainer.get("layer") is not None else ""


def _normalisation(trainer: dict[str, Any]) -> str:
    norm = trainer.get("norm_factor")
    if isinstance(norm, (int, float)):
        return f"trained on activations / {norm:g}, folded into the saved weights"
    return "none"
