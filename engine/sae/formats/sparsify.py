"""EleutherAI sparsify SAEs (PyPI eai-sparsify, ``SparseCoder.save_to_disk``): a folder per hook
point, named for it, holding cfg.json (``SparseCoderConfig`` fields plus d_in) and
sae.safetensors with encoder.weight (d_sae, d_in), encoder.bias (d_sae,), W_dec (d_sae, d_in)
and b_dec (d_in,). Its encoder is top-k of ReLU((x - b_dec) @ encoder.weight.T + encoder.bias),
decoded as codes @ W_dec + b_dec: LatentLab's TopK exactly (TopK then ReLU picks the same
codes). Its "groupmax" activation, skip connections and transcoders have no LatentLab
counterpart and are refused by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from engine.sae.base import SAEConfig
from engine.sae.formats.common import (
    check_shapes,
    dtype_name,
    floats,
    need,
    positive_int,
    read_json,
    shape_of,
)
from engine.sae.formats.detect import SPARSIFY_WEIGHTS
from engine.sae.saelens import CFG_FILENAME, SAEFileError

TENSORS = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")


def read_sparsify(folder: Path) -> tuple[SAEConfig, dict[str, torch.Tensor]]:
    """The config and LatentLab-convention tensors of a sparsify hook-point folder."""
    cfg_path, path = folder / CFG_FILENAME, folder / SPARSIFY_WEIGHTS
    raw = read_json(cfg_path)
    _refuse_unsupported(raw, cfg_path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SAEFileError(f"{path} is not a readable safetensors file ({exc})") from exc
    if "W_skip" in tensors:
        raise SAEFileError(f"{path} has a skip connection (tensor 'W_skip'), which LatentLab's SAEs lack")
    need(tensors, TENSORS, path, "a sparsify SAE")
    d_sae, d_in = shape_of(tensors, "encoder.weight", 2, path)
    check_shapes(tensors, {"encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}, path)
    if raw.get("d_in", d_in) != d_in:
        raise SAEFileError(f"{cfg_path}: field 'd_in' is {raw.get('d_in')!r}, but {path} holds d_in={d_in}")
    W, b, W_dec, b_dec = floats(*(tensors[name] for name in TENSORS))  # noqa: N806
    k = positive_int(raw.get("k", 32), f"{cfg_path}: field 'k'")
    extra = {"format": {"name": "sparsify", "normalisation": "none", "activation": "topk",
                        "normalize_decoder": bool(raw.get("normalize_decoder", True)),
                        "file_dtype": str(tensors["encoder.weight"].dtype).removeprefix("torch.")}}
    cfg = SAEConfig(arch="topk", d_in=d_in, d_sae=d_sae, k=min(k, d_sae), hook_name=folder.name,
                    dtype=dtype_name(W), extra=extra)
    return cfg, {"W_enc": W.t().contiguous(), "b_enc": b, "W_dec": W_dec, "b_dec": b_dec}


def _refuse_unsupported(raw: dict[str, Any], path: Path) -> None:
    """SAEFileError for the sparsify options LatentLab has no architecture for."""
    activation = raw.get("activation", "topk")
    if activation != "topk":
        raise SAEFileError(f"{path}: field 'activation' is {activation!r}; LatentLab reads sparsify's "
                           f"'topk' SAEs (no architecture of its own computes {activation!r})")
    if raw.get("transcode"):
        raise SAEFileError(f"{path}: field 'transcode' is true: a transcoder (it predicts another "
                           f"activation), not an SAE LatentLab reads")
    if raw.get("skip_connection"):
        raise SAEFileError(f"{path}: field 'skip_connection' is true, which LatentLab's SAEs lack")
