"""Convert a llama-architecture GGUF file (the bundled SmolLM2) into a Hugging Face folder:
config.json, model.safetensors, tokenizer.json and tokenizer_config.json.

transformers can load a GGUF file itself, but it parses the whole file three times (config,
tokenizer, weights; ~28 s on two cores), which is most of a first launch's wait. Here the file
is read once: the metadata with ``struct`` over a memory map, the blocks de-quantised by the
``gguf`` package (the code transformers uses too, so the weights are bit for bit its weights),
the q/k rows un-permuted as llama.cpp's converter permuted them. A test checks the folder
against transformers' own conversion: weights, config and tokenizer."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ModelError

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_CONTROL = 3  # tokenizer.ggml.token_type of a control token (<|endoftext|>, <|im_start|>...)

# GGUF tensor names -> Hugging Face llama parameter names ({i}: the block)
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


class GGUFFile:
    """A GGUF file's metadata (``meta``: key -> value) and tensor table, read once; tensors
    are read (and de-quantised) on request from a memory map."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._blob = np.memmap(self.path, dtype=np.uint8, mode="r")
        self._pos = 0
        if bytes(self._blob[:4]) != b"GGUF":
            raise ModelError(f"{self.path}: not a GGUF file (no GGUF magic)")
        self._pos = 4
        version = self._unpack("<I")
        if version not in (2, 3):
            raise ModelError(f"{self.path}: GGUF version {version}; versions 2 and 3 are read")
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        self.meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self._string()
            self.meta[key] = self._value(self._unpack("<I"))
        self.tensors: dict[str, tuple[tuple[int, ...], int, int]] = {}  # name: (ggml dims, type, offset)
        for _ in range(n_tensors):
            name = self._string()
            dims = tuple(self._unpack("<Q") for _ in range(self._unpack("<I")))
            kind, offset = self._unpack("<I"), self._unpack("<Q")
            self.tensors[name] = (dims, kind, offset)
        align = int(self.meta.get("general.alignment", 32))
        self._data = (self._pos + align - 1) // align * align

    def _unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        (value,) = struct.unpack_from(fmt, self._blob, self._pos)
        self._pos += size
        return value

    def _string(self) -> str:
        n = self._unpack("<Q")
        text = bytes(self._blob[self._pos:self._pos + n]).decode("utf-8", errors="replace")
        self._pos += n
        return text

    def _value(self, kind: int) -> Any:
        if kind == _STRING:
            return self._string()
        if kind == _ARRAY:
            item, n = self._unpack("<I"), self._unpack("<Q")
            if item in _SCALAR:  # a numeric array in one read
                dtype = np.dtype(_SCALAR[item].replace("?", "b1"))
                values = np.frombuffer(self._blob, dtype, n, self._pos)
                self._pos += n * dtype.itemsize
                return values.tolist()
            return [self._value(item) for _ in range(n)]
        if kind not in _SCALAR:
            raise ModelError(f"{self.path}: unknown GGUF value type {kind} at byte {self._pos}")
        return self._unpack(_SCALAR[kind])

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as float32, in torch's dimension order."""
        from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, dequantize
        dims, kind, offset = self.tensors[name]
        qtype = GGMLQuantizationType(kind)
        block, nbytes = GGML_QUANT_SIZES[qtype]
        shape = tuple(reversed(dims))
        count = int(np.prod(dims)) * nbytes // block
        raw = np.frombuffer(self._blob, np.uint8, count, self._data + offset)
        raw = raw.reshape(*shape[:-1], shape[-1] * nbytes // block)
        return np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(shape)


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's interleaving of each head's rotary halves in q/k weights."""
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_config(g: GGUFFile) -> dict[str, Any]:
    """The Hugging Face LlamaConfig fields that the GGUF metadata fixes."""
    arch = g.meta.get("general.architecture")
    if arch != "llama":
        raise ModelError(f"{g.path}: GGUF architecture {arch!r}; only 'llama' is converted here")
    m = lambda key: g.meta[f"llama.{key}"]  # noqa: E731
    heads = int(m("attention.head_count"))
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": int(m("embedding_length")), "intermediate_size": int(m("feed_forward_length")),
        "num_hidden_layers": int(m("block_count")), "num_attention_heads": heads,
        "num_key_value_heads": int(g.meta.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(g.meta.get("llama.rope.dimension_count", int(m("embedding_length")) // heads)),
        "max_position_embeddings": int(m("context_length")),
        "rms_norm_eps": float(m("attention.layer_norm_rms_epsilon")),
        "rope_parameters": {"rope_theta": float(g.meta.get("llama.rope.freq_base", 10000.0)), "rope_type": "default"},
        "vocab_size": int(g.meta.get("llama.vocab_size", len(g.meta["tokenizer.ggml.tokens"]))),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "bos_token_id": g.meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": g.meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": g.meta.get("tokenizer.ggml.padding_token_id"),
        "unk_token_id": g.meta.get("tokenizer.ggml.unknown_token_id"),
        "hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "dtype": "float32",
    }


def llama_state_dict(g: GGUFFile, config: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every weight under its Hugging Face name, float32 (q/k un-permuted)."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    out: dict[str, np.ndarray] = {}
    for name in g.tensors:
        base, _, kind = name.rpartition(".")
        parts = base.split(".")
        if parts[0] == "blk" and len(parts) == 3 and parts[2] in _BLOCK_NAMES:
            hf = f"model.layers.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{kind}"
        elif base in _TOP_NAMES:
            hf = f"{_TOP_NAMES[base]}.{kind}"
        else:
            continue  # e.g. rope_freqs: computed by the model from its config
        w = g.tensor(name)
        if parts[-1] == "attn_q":
            w = _unpermute(w, heads)
        elif parts[-1] == "attn_k":
            w = _unpermute(w, kv_heads)
        out[hf] = np.ascontiguousarray(w)
    return out


def bpe_tokenizer(g: GGUFFile) -> tuple[dict[str, Any], dict[str, Any]]:
    """tokenizer.json and tokenizer_config.json for a GPT-2 style (byte-level BPE) vocabulary."""
    model = g.meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise ModelError(f"{g.path}: tokenizer type {model!r}; only byte-level BPE ('gpt2') is converted here")
    tokens: list[str] = g.meta["tokenizer.ggml.tokens"]
    types = g.meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if len(types) != len(tokens):
        raise ModelError(f"{g.path}: tokenizer.ggml.token_type has {len(types)} entries for {len(tokens)} tokens")
    merges = [m.split(" ", 1) for m in g.meta["tokenizer.ggml.merges"]]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, (t, k) in enumerate(zip(tokens, types, strict=True)) if k == _CONTROL]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {}},
        "decoder": {**byte_level, "add_prefix_space": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }

    def token(key: str) -> str | None:
        i = g.meta.get(f"tokenizer.ggml.{key}")
        return tokens[i] if i is not None else None

    config = {"backend": "tokenizers", "tokenizer_class": "TokenizersBackend",
              "bos_token": token("bos_token_id"), "eos_token": token("eos_token_id"),
              "unk_token": token("unknown_token_id"), "pad_token": token("padding_token_id"),
              "add_bos_token": bool(g.meta.get("tokenizer.ggml.add_bos_token", False)),
              "model_max_length": int(1e30)}
    if "tokenizer.chat_template" in g.meta:
        config["chat_template"] = g.meta["tokenizer.chat_template"]
    return tokenizer, config


def convert_gguf_llama(src: str | Path, out: str | Path) -> Path:
    """Write the Hugging Face folder ``out`` for the llama GGUF file ``src``; return it."""
    from safetensors.numpy import save_file
    g = GGUFFile(src)
    config = llama_config(g)
    tokenizer, tokenizer_config = bpe_tokenizer(g)  # before the weights: a bad vocabulary fails fast
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = llama_state_dict(g, config)
    if config["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config[k] is not None}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return out
