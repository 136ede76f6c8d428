"""Resolve a model spec string to an adapter.

Specs: ``smollm2`` (bundled); ``hf:NAME_OR_PATH`` / ``hf-causal:...`` / ``hf-encoder:...``
(a local folder or the offline HF cache); a folder (config.json: Hugging Face, auto
detected; latentlab_model.json: the digits zoo); ``file.py:factory`` or
``package.module:factory`` (any torch.nn.Module). Options follow ``?``, e.g.
``hf-encoder:path?pooling=mean``. Every model loads in float32; ``dtype`` casts it to run in
bfloat16 or float16 (``ModelAdapter.set_dtype``), for any kind of model."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl

from engine.errors import ModelError
from engine.models.base import MODEL_DTYPES, ModelAdapter

HF_PREFIXES = ("hf:", "hf-causal:", "hf-encoder:")


class ModelSpec(NamedTuple):
    """A model spec string, parsed: ``kind`` is ``smollm2``, ``hf``/``hf-causal``/``hf-encoder``
    (a prefix given), ``factory`` (``file.py:factory``, ``package.module:factory``), ``path``
    (a folder) or ``name`` (a bare name: a folder here, else a Hugging Face name); ``target``
    is the part after any prefix, without the ``?options``."""

    text: str
    kind: str
    target: str
    options: dict[str, str]

    @classmethod
    def parse(cls, spec: str) -> ModelSpec:
        text = spec.strip()
        body, opts = split_options(text)
        if body == "smollm2":
            return cls(text, "smollm2", body, opts)
        if body.startswith(HF_PREFIXES):
            kind, target = body.split(":", 1)
            return cls(text, kind, target, opts)
        if ":" in body and not body.startswith(("/", ".")) or body.endswith(".py") or ".py:" in body:
            return cls(text, "factory", body, opts)
        if os.path.sep in body or "/" in body or body.startswith((".", "~")):
            return cls(text, "path", body, opts)
        return cls(text, "name", body, opts)

    @property
    def file(self) -> str | None:
        """The file or folder the spec names on this machine (None: a name or a module)."""
        if self.kind == "factory":
            if ".py:" in self.target:
                return self.target.split(".py:", 1)[0] + ".py"
            return self.target if self.target.endswith(".py") else None
        return self.target if self.kind in ("path", "name") else None

    def missing(self) -> str | None:
        """The file or folder the spec names when it does not exist (a name never counts)."""
        path = self.file
        if path is None or self.kind == "name" or Path(path).expanduser().exists():
            return None
        return path

    @property
    def short_name(self) -> str:
        """A file-name-safe short name: smollm2, a folder's or file's name, an HF repo's name."""
        body = self.target.split(".py:", 1)[0].rstrip("/")
        return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(body).name)[:40] or "model"


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
    s = ModelSpec.parse(spec)
    if s.kind == "smollm2":
        from engine.models.smollm2 import load_smollm2
        return load_smollm2()
    if s.kind.startswith("hf"):
        return _load_hf(s.target, s.kind, s.options, spec)
    if os.path.isdir(s.target):
        folder = Path(s.target)
        if (folder / "latentlab_model.json").is_file():
            from engine.models.digits_zoo import DigitsZooModel
            return DigitsZooModel.load(folder)
        if (folder / "config.json").is_file():
            return _load_hf(s.target, "hf", s.options, spec)
        raise ModelError(f"model folder {s.target} has neither config.json (Hugging Face) "
                         "nor latentlab_model.json (digits zoo)")
    if s.kind == "factory":
        from engine.models.torch_module import load_factory
        return load_factory(s.target)
    if s.kind == "path":
        raise ModelError(f"model path {s.target} does not exist")
    return _load_hf(s.target, "hf", s.options, spec)


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
