"""KempnerInstitute overcomplete SAEs (PyPI overcomplete). Overcomplete has no file format of its
own: a checkpoint is ``torch.save(sae.state_dict(), "NAME.pt")``, loaded here with
``weights_only=True``. What the state dict cannot say (the class, its top_k, the dictionary's
normalisation) comes from a config.json beside it holding the constructor's arguments:

  {"sae": "TopKSAE", "top_k": 8, "encoder_module": "linear",
   "dictionary_params": {"normalization": "l2"}, "hook_name": "..."}

(without one, a checkpoint with ``thresholds`` is a JumpSAE; others need it). The mapping, for
the "linear" encoder (Linear, then ReLU) and "mlp_bn_1" (Linear, BatchNorm1d, ReLU; the
BatchNorm's eval-mode affine map folded into the encoder):

  SAE           relu: ReLU(pre)
  TopKSAE       topk: the top_k largest of ReLU(pre)
  JumpSAE       jumprelu: ReLU(pre) where >= exp(thresholds)
  BatchTopKSAE  batchtopk: ReLU(pre) where >= its running threshold (not in the state dict:
                config.json's "running_threshold")

with W_dec = the eval-mode dictionary (normalisation(_weights) * exp(multiplier)) and b_dec = 0
(overcomplete decodes without a bias). Other classes and encoders are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.sae.base import SAEConfig
from engine.sae.formats.common import (
    check_shapes,
    dtype_name,
    floats,
    need,
    positive_int,
    read_json,
    read_state_dict,
)
from engine.sae.formats.detect import TORCH_SUFFIXES
from engine.sae.saelens import SAEFileError

CONFIG = "config.json"
ARCH = {"SAE": "relu", "TopKSAE": "topk", "JumpSAE": "jumprelu", "BatchTopKSAE": "batchtopk"}
ENCODERS = ("linear", "mlp_bn_1")
BATCHNORM_EPS = 1e-5  # nn.BatchNorm1d's default, which overcomplete's encoders use
LINEAR = "encoder.final_block.0."
NORM = "encoder.final_block.1."
DICTIONARY = ("dictionary._weights",)


def read_overcomplete(path: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """The config and LatentLab-convention tensors of an overcomplete checkpoint (``path``: the
    .pt/.pth file or the folder holding it and its config.json)."""
    path = _checkpoint(path)
    config_path = path.parent / CONFIG
    config = read_json(config_path, required=False)
    state = read_state_dict(path)
    need(state, (*DICTIONARY, LINEAR + "weight"), path, "an overcomplete SAE (linear encoder, dictionary layer)")
    cls = config.get("sae") or ("JumpSAE" if "thresholds" in state else None)
    if cls is None:
        raise SAEFileError(f"{path} is an overcomplete SAE without {config_path} to say its class and top_k "
                           f'(e.g. {{"sae": "TopKSAE", "top_k": 8}}; classes LatentLab reads: {", ".join(ARCH)})')
    if cls not in ARCH:
        raise SAEFileError(f"{config_path}: field 'sae' is {cls!r}, an overcomplete SAE LatentLab cannot read; "
                           f"it reads {', '.join(ARCH)}")
    W_enc, b_enc = _encoder(state, config, path, config_path)  # noqa: N806
    d_in, d_sae = W_enc.shape
    norm = (config.get("dictionary_params") or {}).get("normalization", "l2")
    W_dec = _dictionary(state, norm, path, config_path)  # noqa: N806
    check_shapes({"W_dec": W_dec}, {"W_dec": (d_sae, d_in)}, path)
    tensors = {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": W_dec.new_zeros(d_in)}
    cfg = SAEConfig(arch=ARCH[cls], d_in=d_in, d_sae=d_sae, hook_name=str(config.get("hook_name") or ""),
                    model_id=str(config.get("model_id") or ""), dtype=dtype_name(W_enc),
                    extra={"format": {"name": "overcomplete", "sae": cls, "dictionary_normalization": norm,
                                      "encoder_module": config.get("encoder_module", "linear"),
                                      "normalisation": "none"}})
    if cls in ("TopKSAE", "BatchTopKSAE"):
        top_k = config.get("top_k", max(d_sae // 10, 1))  # overcomplete's default
        cfg.k = min(positive_int(top_k, f"{config_path}: field 'top_k'"), d_sae)
    if cls == "JumpSAE":
        need(state, ("thresholds",), path, "an overcomplete JumpSAE")
        check_shapes(state, {"thresholds": (d_sae,)}, path)
        tensors["threshold"] = floats(state["thresholds"])[0].double().exp().to(W_enc.dtype)
    if cls == "BatchTopKSAE":
        thr = config.get("running_threshold")
        if isinstance(thr, bool) or not isinstance(thr, (int, float)):
            raise SAEFileError(f"{config_path}: field 'running_threshold' is {thr!r}; an overcomplete BatchTopKSAE "
                               f"keeps its inference threshold outside the state dict, so config.json must give it")
        tensors["threshold"] = W_enc.new_full((d_sae,), float(thr))
    return cfg, tensors


def _checkpoint(path: Path) -> Path:
    """The one .pt/.pth file ``path`` names or holds."""
    if path.is_file():
        return path
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in TORCH_SUFFIXES)
    if len(found) != 1:
        raise SAEFileError(f"{path} holds {len(found)} .pt/.pth files ({', '.join(p.name for p in found)}); "
                           f"name the overcomplete checkpoint to open")
    return found[0]


def _encoder(state: dict[str, torch.Tensor], config: dict[str, Any], path: Path,
             config_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """W_enc (d_in, d_sae) and b_enc of the encoder's pre-activations, BatchNorm folded in."""
    module = config.get("encoder_module", "mlp_bn_1" if NORM + "running_mean" in state else "linear")
    deeper = sorted(k for k in state if k.startswith("encoder.") and not k.startswith(("encoder.final_block.0.",
                                                                                        "encoder.final_block.1.")))
    if module not in ENCODERS or deeper:
        raise SAEFileError(f"{config_path if module not in ENCODERS else path}: encoder {module!r}"
                           f"{' (tensors ' + ', '.join(deeper[:4]) + ')' if deeper else ''} is not one LatentLab "
                           f"can map onto an SAE encoder; it reads {', '.join(ENCODERS)}")
    W, = floats(state[LINEAR + "weight"])  # noqa: N806
    b = floats(state[LINEAR + "bias"])[0] if LINEAR + "bias" in state else W.new_zeros(W.shape[0])
    if module == "mlp_bn_1":
        need(state, tuple(NORM + n for n in ("weight", "bias", "running_mean", "running_var")), path,
             "an overcomplete mlp_bn_1 encoder")
        gamma, beta, mean, var = (state[NORM + n].double() for n in ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / (var + BATCHNORM_EPS).sqrt()
        W = (W.double() * scale[:, None]).to(W.dtype)  # noqa: N806
        b = ((b.double() - mean) * scale + beta).to(b.dtype)
    elif NORM + "weight" in state:
        raise SAEFileError(f"{path}: the encoder has a normalisation layer ({NORM}weight) but config.json's "
                           f"'encoder_module' is {module!r}")
    return W.t().contiguous(), b


def _dictionary(state: dict[str, torch.Tensor], norm: str, path: Path, config_path: Path) -> torch.Tensor:
    """The eval-mode dictionary (d_sae, d_in): normalisation(_weights) * exp(multiplier)."""
    w = floats(state["dictionary._weights"])[0]
    d = w.double()
    if norm == "l2":
        d = d / (d.norm(p=2, dim=1, keepdim=True) + 1e-8)
    elif norm == "l1":
        d = d / (d.norm(p=1, dim=1, keepdim=True) + 1e-8)
    elif norm == "max_l2":
        d = d / d.norm(p=2, dim=1, keepdim=True).amax(dim=0, keepdim=True)
    elif norm == "max_l1":
        d = d / d.norm(p=1, dim=1, keepdim=True).amax(dim=0, keepdim=True)
    elif norm != "identity":
        raise SAEFileError(f"{config_path}: field 'dictionary_params.normalization' is {norm!r}; overcomplete's "
                           f"are l2, max_l2, l1, max_l1 and identity")
    if "dictionary.multiplier" in state:
        d = d * state["dictionary.multiplier"].double().exp()
    return d.to(w.dtype)
