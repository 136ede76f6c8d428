"""What the readers of other libraries' SAE files share: reading a JSON config and a torch
state dict (``weights_only=True``: a checkpoint never runs code), checking tensor shapes, and
folding conventions into LatentLab's (x - b_dec) @ W_enc + b_enc."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import torch

from engine.sae.saelens import SAEFileError


def read_json(path: Path, required: bool = True) -> dict[str, Any]:
    """The JSON object in ``path``; {} when it is absent and not ``required``."""
    if not path.is_file():
        if required:
            raise SAEFileError(f"{path} is missing")
        return {}
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SAEFileError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise SAEFileError(f"{path} holds a JSON {type(raw).__name__}, not an object of fields")
    return raw


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a torch checkpoint holding a state dict, loaded with weights_only=True."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SAEFileError(f"{path} is not a readable torch state dict of tensors (loaded with "
                           f"weights_only=True: {first})") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SAEFileError(f"{path} holds a {type(state).__name__}, not a state dict of tensors "
                           f"(save the model's state_dict(), not the model)")
    return {str(k).removeprefix("module."): v for k, v in state.items()}


def need(tensors: dict[str, torch.Tensor], names: tuple[str, ...], path: Path, what: str) -> None:
    """SAEFileError naming the first of ``names`` that ``path`` lacks and the keys it has."""
    for name in names:
        if name not in tensors:
            keys = ", ".join(sorted(tensors)[:10])
            raise SAEFileError(f"{path} has no tensor {name!r}, which {what} needs (it holds: {keys})")


def shape_of(tensors: dict[str, torch.Tensor], name: str, ndim: int, path: Path) -> tuple[int, ...]:
    """The shape of ``tensors[name]``, checked to have ``ndim`` dimensions."""
    shape = tuple(tensors[name].shape)
    if len(shape) != ndim:
        raise SAEFileError(f"{path}: tensor {name!r} has shape {shape}, not {ndim}-dimensional")
    return shape


def check_shapes(tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]], path: Path) -> None:
    """SAEFileError naming a tensor whose shape differs from ``shapes``."""
    for name, want in shapes.items():
        got = tuple(tensors[name].shape)
        if got != want:
            raise SAEFileError(f"{path}: tensor {name!r} has shape {got}, but the SAE's other tensors need {want}")


def floats(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Float copies (bfloat16 and half files load as float32; float64 stays)."""
    return [t.detach().clone() if t.dtype in (torch.float32, torch.float64) else t.detach().float()
            for t in tensors]


@torch.no_grad()
def bias_without_b_dec(b_enc: torch.Tensor, W_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:  # noqa: N803
    """b_enc' with x @ W_enc + b_enc == (x - b_dec) @ W_enc + b_enc' (for encoders that do not
    subtract the decoder bias from their input)."""
    return (b_enc.double() + b_dec.double() @ W_enc.double()).to(b_enc.dtype)


def positive_int(value: Any, where: str) -> int:
    """``value`` as a positive int (a 0-d tensor is read), else SAEFileError naming ``where``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0 or int(value) != value:
        raise SAEFileError(f"{where} is {value!r}; it must be a positive integer")
    return int(value)


def dtype_name(t: torch.Tensor) -> str:
    """The SAEConfig dtype name of a tensor's dtype (float32 for the half types, loaded as float32)."""
    return "float64" if t.dtype == torch.float64 else "float32"
