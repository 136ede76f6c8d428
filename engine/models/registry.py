"""Resolve a model spec string to an adapter.

Specs: ``smollm2`` (bundled); ``hf:NAME_OR_PATH`` / ``hf-causal:...`` / ``hf-encoder:...``
(a local folder or the offline HF cache); a folder (config.json: Hugging Face, auto
detected; latentlab_model.json: the digits zoo); ``file.py:factory`` or
``package.module:factory`` (any torch.nn.Module). Options follow ``?``, e.g.
``hf-encoder:path?pooling=mean``. Every model loads in float32; ``dtype`` casts it to run in
bfloat16 or float16 (``ModelAdapter.set_dtype``), for any kind of model."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl

from engine.errors import ModelError
from engine.models.base import MODEL_DTYPES, ModelAdapter

HF_PREFIXES = ("hf:", "hf-causal:", "hf-encoder:")


def split_options(spec: str) -> tuple[str, dict[str, str]]:
    if "?" not in spec:
        return spec, {}
    body, query = spec.split("?", 1)
    return body, dict(parse_qsl(query, keep_blank_values=True))


def load_model(spec: str, dtype: str = "float32") -> ModelAdapter:
    """Load the model a spec names (see the module docstring), to run in precision
    ``dtype`` (float32, bfloat16, float16); raises ModelError."""
    if dtype not in MODEL_DTYPES:
        raise ModelError(f"model {spec}: dtype must be one of {', '.join(MODEL_DTYPES)}, not {dtype!r}")
    adapter = _load(spec)
    adapter.spec = spec
    return adapter if dtype == "float32" else adapter.set_dtype(dtype)


def _load(spec: str) -> ModelAdapter:
    body, opts = split_options(spec.strip())
    if body == "smollm2":
        from engine.models.smollm2 import load_smollm2
        return load_smollm2()
    if body.startswith(HF_PREFIXES):
        kind, name = body.split(":", 1)
        return _load_hf(name, kind, opts, spec)
    if os.path.isdir(body):
        folder = Path(body)
        if (folder / "latentlab_model.json").is_file():
            from engine.models.digits_zoo import DigitsZooModel
            return DigitsZooModel.load(folder)
        if (folder / "config.json").is_file():
            return _load_hf(body, "hf", opts, spec)
        raise ModelError(f"model folder {body} has neither config.json (Hugging Face) "
                         "nor latentlab_model.json (digits zoo)")
    if ":" in body and not body.startswith(("/", ".")) or body.endswith(".py") or ".py:" in body:
        from engine.models.torch_module import load_factory
        return load_factory(body)
    if os.path.sep in body or body.startswith("."):
        raise ModelError(f"model path {body} does not exist")
    return _load_hf(body, "hf", opts, spec)


def _load_hf(name: str, kind: str, opts: dict[str, str], spec: str) -> ModelAdapter:
    from engine.models.hf import HFCausalLM, HFEncoder, is_causal_config, resolve_hf_path
    path = resolve_hf_path(name)
    if kind == "hf":
        kind = "hf-causal" if is_causal_config(path) else "hf-encoder"
    if kind == "hf-encoder":
        return HFEncoder(path, model_id=spec, pooling=opts.get("pooling"))
    return HFCausalLM(path, model_id=spec)


def cached_model(spec: str, dtype: str = "float32") -> ModelAdapter:
    """``load_model`` memoised per process and precision (the GUI's engine thread keeps
    models warm); a reduced-precision model is a separate entry, never the float32 one cast."""
    return _cached(spec, dtype)


@lru_cache(maxsize=4)
def _cached(spec: str, dtype: str) -> ModelAdapter:
    return load_model(spec, dtype)
