"""Hugging Face adapters: causal LMs (llama, gpt2, gpt-neox families and their kin) and
BERT-style encoders, loaded from a local folder or the offline HF cache."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import ModelError
from engine.hooks import HookSite
from engine.models.base import ModelAdapter, ModelBatch

# (path to the block list, attention output projection, MLP) per architecture family,
# tried in order; the first whose block list exists wins.
_DECODER_LAYOUTS = (
    ("model.layers", "self_attn.o_proj", "mlp"),       # llama, mistral, qwen2/3, gemma, olmo
    ("transformer.h", "attn.c_proj", "mlp"),           # gpt2
    ("gpt_neox.layers", "attention.dense", "mlp"),     # gpt-neox, pythia
    ("transformer.layers", "self_attn.out_proj", "mlp"),
)
_ENCODER_LAYOUTS = (
    ("encoder.layer", "attention.output.dense", "output.dense"),   # bert, roberta, electra
    ("transformer.layer", "attention.out_lin", "ffn"),              # distilbert
    ("layers", "attn.o_proj", "mlp"),                               # modernbert-like
)


def quiet_transformers() -> None:
    """Silence transformers' per-load progress bars and info logs (we show our own progress)."""
    from transformers.utils import logging
    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _has(obj: Any, dotted: str) -> bool:
    try:
        _get(obj, dotted)
        return True
    except AttributeError:
        return False


def _block_sites(module: nn.Module, layouts: Sequence[tuple[str, str, str]], model_id: str) -> dict[str, HookSite]:
    """Canonical TransformerLens-style hook points for a stack of transformer blocks."""
    for blocks_path, attn_out, mlp in layouts:
        if not _has(module, blocks_path):
            continue
        blocks = _get(module, blocks_path)
        sites = {"embed": HookSite(blocks[0], "input")}
        for i, block in enumerate(blocks):
            if _has(block, attn_out):
                sites[f"blocks.{i}.attn.hook_z"] = HookSite(_get(block, attn_out), "input")
                sites[f"blocks.{i}.hook_attn_out"] = HookSite(_get(block, attn_out), "output")
            if _has(block, mlp):
                sites[f"blocks.{i}.hook_mlp_out"] = HookSite(_get(block, mlp), "output")
            sites[f"blocks.{i}.hook_resid_post"] = HookSite(block, "output")
        return sites
    raise ModelError(f"{model_id}: unsupported architecture {type(module).__name__} "
                     "(no known list of transformer blocks)")


def resolve_hf_path(name: str) -> str:
    """A local folder as is; otherwise a model name looked up in the offline HF cache."""
    if os.path.isdir(name):
        return name
    if os.path.sep in name and not name.count("/") == 1:
        raise ModelError(f"model path {name} does not exist")
    try:
        from huggingface_hub import snapshot_download
        return snapshot_download(name, local_files_only=True)
    except Exception:
        raise ModelError(f"model {name!r}: no such folder and not in the offline Hugging Face "
                         "cache (nothing can be downloaded here)") from None


def load_tokenizer(path: str, model_id: str):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise ModelError(f"{model_id}: cannot load its tokenizer from {path} ({exc})") from None


class _HFText(ModelAdapter):
    """Shared text handling: tokenizing, BOS detection and padded batches."""

    def _init_text(self) -> None:
        """Find the special tokens the tokenizer wraps a text in ([BOS] or [CLS] ... [SEP])."""
        tok = self.tokenizer
        full = list(tok("a").input_ids)
        plain = list(tok("a", add_special_tokens=False).input_ids)
        at = next((i for i in range(len(full) - len(plain) + 1) if full[i:i + len(plain)] == plain), 0)
        self._prefix, self._suffix = full[:at], full[at + len(plain):]
        self._pad = tok.pad_token_id if tok.pad_token_id is not None else 0

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False).input_ids

    @property
    def n_special(self) -> int:
        return len(self._prefix) + len(self._suffix)

    def make_batch(self, items: Sequence[Sequence[int]]) -> ModelBatch:
        """Right-padded windows of document tokens, wrapped in the tokenizer's special
        tokens; only the document tokens are marked as rows to keep."""
        pre, suf = self._prefix, self._suffix
        width = max(len(w) for w in items) + len(pre) + len(suf)
        ids = torch.full((len(items), width), self._pad, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        keep = torch.zeros((len(items), width), dtype=torch.bool)
        for i, w in enumerate(items):
            row = [*pre, *w, *suf]
            ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
            keep[i, len(pre): len(pre) + len(w)] = True
        return ModelBatch({"input_ids": ids, "attention_mask": mask}, keep)

    def example_batch(self) -> ModelBatch:
        return self.make_batch([self.tokenize("Hello world")])


    @property
    def max_context(self) -> int:
        cfg = self.module.config
        for key in ("max_position_embeddings", "n_positions"):
            if getattr(cfg, key, None):
                return int(getattr(cfg, key))
        return 1 << 30


class HFCausalLM(_HFText):
    """A Hugging Face causal language model."""

    kind = "causal-lm"

    def __init__(self, path: str | os.PathLike, model_id: str | None = None,
                 module: nn.Module | None = None, tokenizer: Any = None) -> None:
        from transformers import AutoModelForCausalLM
        quiet_transformers()
        path = str(path)
        self.model_id = model_id or path
        if module is None:
            try:
                module = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            except Exception as exc:
                raise ModelError(f"{self.model_id}: cannot load a causal LM from {path} ({exc})") from None
        self.module = module.eval()
        self.tokenizer = tokenizer or load_tokenizer(path, self.model_id)
        self._sites = _block_sites(self.module, _DECODER_LAYOUTS, self.model_id)
        self._init_text()

    def hook_sites(self):
        return self._sites

    def run(self, batch: ModelBatch) -> Any:
        return self.module(**batch.inputs, use_cache=False)

    def logits(self, batch: ModelBatch) -> torch.Tensor:
        """Next-token logits (batch, seq, vocab) from a full forward pass."""
        with torch.inference_mode():
            return self.run(batch.to(self.device)).logits


class HFEncoder(_HFText):
    """A BERT-style encoder; ``pooling='mean'`` stores one mean-pooled row per window."""

    kind = "encoder"

    def __init__(self, path: str | os.PathLike, model_id: str | None = None,
                 pooling: str | None = None, module: nn.Module | None = None,
                 tokenizer: Any = None) -> None:
        from transformers import AutoModel
        quiet_transformers()
        path = str(path)
        self.model_id = model_id or path
        if pooling not in (None, "none", "mean"):
            raise ModelError(f"{self.model_id}: pooling must be 'mean' or 'none', not {pooling!r}")
        self.pooling = None if pooling == "none" else pooling
        if module is None:
            try:
                module = AutoModel.from_pretrained(path)
            except Exception as exc:
                raise ModelError(f"{self.model_id}: cannot load an encoder from {path} ({exc})") from None
        self.module = module.eval()
        self.tokenizer = tokenizer or load_tokenizer(path, self.model_id)
        self._sites = _block_sites(self.module, _ENCODER_LAYOUTS, self.model_id)
        self._init_text()

    def hook_sites(self):
        return self._sites

    def run(self, batch: ModelBatch) -> Any:
        return self.module(**batch.inputs)


def is_causal_config(path: str) -> bool:
    """True when a folder's config.json describes a causal LM (by its architectures)."""
    import json
    cfg = json.loads((Path(path) / "config.json").read_text())
    archs = cfg.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return True
    return bool(cfg.get("is_decoder")) or cfg.get("model_type") in {"gpt2", "llama", "gpt_neox", "mistral", "qwen2"}
