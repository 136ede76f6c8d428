"""Which library wrote an SAE folder, told from the names of its files (nothing is loaded):

  latentlab / saelens   cfg.json + sae_weights.safetensors (LatentLab writes SAELens's layout;
                        its own config sits under cfg.json's "latentlab" key)
  sparsify              cfg.json + sae.safetensors (EleutherAI sparsify, a folder per hook point;
                        the folder above them is named with the hook points it holds)
  dictionary_learning   ae.pt (+ config.json) (saprmarks/dictionary_learning's trainSAE)
  overcomplete          one .pt/.pth state dict (+ config.json) (KempnerInstitute/overcomplete)

Anything else is an SAEFileError naming the folder and the files found there."""

from __future__ import annotations

import json
from pathlib import Path

from engine.sae.saelens import CFG_FILENAME, WEIGHTS_FILENAME, SAEFileError

SPARSIFY_WEIGHTS = "sae.safetensors"
DICTIONARY_LEARNING_WEIGHTS = "ae.pt"
TORCH_SUFFIXES = (".pt", ".pth")
FORMATS = ("latentlab", "saelens", "sparsify", "dictionary_learning", "overcomplete")


def detect_sae_format(folder: str | Path) -> str:
    """The library that wrote ``folder`` (one of ``FORMATS``), from its file names."""
    folder = Path(folder)
    if folder.is_file():
        if folder.suffix in TORCH_SUFFIXES:
            return "dictionary_learning" if folder.name == DICTIONARY_LEARNING_WEIGHTS else "overcomplete"
        raise SAEFileError(f"{folder} is a file, not an SAE folder (or a .pt/.pth checkpoint)")
    if not folder.is_dir():
        raise SAEFileError(f"SAE folder {folder} does not exist")
    names = {p.name for p in folder.iterdir()}
    if WEIGHTS_FILENAME in names or (CFG_FILENAME in names and SPARSIFY_WEIGHTS not in names
                                      and not _torch_files(folder)):
        return "latentlab" if CFG_FILENAME in names and _has_latentlab_block(folder) else "saelens"
    if SPARSIFY_WEIGHTS in names:
        return "sparsify"
    if DICTIONARY_LEARNING_WEIGHTS in names:
        return "dictionary_learning"
    if len(_torch_files(folder)) == 1:
        return "overcomplete"
    hooks = sparsify_hook_folders(folder)
    if hooks:
        raise SAEFileError(f"{folder} holds EleutherAI sparsify SAEs for {len(hooks)} hook points "
                           f"({', '.join(hooks[:8])}{', ...' if len(hooks) > 8 else ''}): open one of "
                           f"them, e.g. {folder / hooks[0]}")
    runs = sorted(p.name for p in folder.iterdir() if (p / DICTIONARY_LEARNING_WEIGHTS).is_file())
    if runs:
        raise SAEFileError(f"{folder} holds {len(runs)} dictionary_learning SAEs ({', '.join(runs[:8])}"
                           f"{', ...' if len(runs) > 8 else ''}): open one of them, e.g. {folder / runs[0]}")
    found = ", ".join(sorted(names)[:12]) + (", ..." if len(names) > 12 else "") if names else "no files"
    raise SAEFileError(f"{folder} is not an SAE folder LatentLab knows: found {found}; it reads "
                       f"cfg.json + {WEIGHTS_FILENAME} (LatentLab, SAELens), cfg.json + {SPARSIFY_WEIGHTS} "
                       f"(sparsify), {DICTIONARY_LEARNING_WEIGHTS} + config.json (dictionary_learning) or "
                       f"one .pt/.pth state dict (overcomplete)")


def sae_files(folder: str | Path) -> list[Path]:
    """The files that make the SAE in ``folder`` (its weights, and its config where it has one),
    whichever library wrote it: what a cache of the loaded SAE, or of results computed from it,
    is keyed on."""
    folder = Path(folder)
    fmt = detect_sae_format(folder)
    if folder.is_file():
        names = [folder.name, "config.json"]
        folder = folder.parent
    else:
        names = {"latentlab": [CFG_FILENAME, WEIGHTS_FILENAME], "saelens": [CFG_FILENAME, WEIGHTS_FILENAME],
                 "sparsify": [CFG_FILENAME, SPARSIFY_WEIGHTS],
                 "dictionary_learning": [DICTIONARY_LEARNING_WEIGHTS, "config.json"],
                 "overcomplete": [p.name for p in _torch_files(folder)] + ["config.json"]}[fmt]
    return [folder / name for name in names if (folder / name).is_file()]


def sparsify_hook_folders(folder: Path) -> list[str]:
    """The sub-folders of ``folder`` that are sparsify SAEs (one per hook point), sorted."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / SPARSIFY_WEIGHTS).is_file())


def _torch_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in TORCH_SUFFIXES)


def _has_latentlab_block(folder: Path) -> bool:
    """Whether cfg.json carries LatentLab's own config (a damaged file counts as SAELens's:
    its reader names what is wrong)."""
    try:
        raw = json.loads((folder / CFG_FILENAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(raw, dict) and "latentlab" in raw
