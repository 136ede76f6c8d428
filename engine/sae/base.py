"""The one interface every sparse autoencoder offers, its config, and the registry that
maps an architecture name (as written into cfg.json) to its class.

Shapes: x (batch, d_in); codes (batch, d_sae); W_enc (d_in, d_sae); W_dec (d_sae, d_in)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from engine.errors import LatentLabError


@dataclass
class SAEConfig:
    """What defines an SAE: its architecture, sizes, sparsity knobs and where it was trained."""

    arch: str
    d_in: int
    d_sae: int
    k: int = 32  # topk, batchtopk, mp, gtopk: latents (or greedy steps) per row
    l1_coeff: float = 5.0  # relu: weight of the decoder-norm-weighted L1 penalty
    l0_coeff: float = 1.0  # jumprelu: weight of the L0 penalty
    jumprelu_init_threshold: float = 0.001
    jumprelu_bandwidth: float = 0.001
    aux_k: int | None = None  # topk family: latents used by the AuxK loss (default d_in // 2)
    aux_coeff: float = 1 / 32
    dead_after_tokens: int = 10_000_000  # a latent unfired this long counts as dead (AuxK)
    hook_name: str = ""
    model_id: str = ""
    store_id: str = ""  # source/model identity of the store it was trained on
    dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAEConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class ForwardOutput(NamedTuple):
    x_hat: torch.Tensor  # (batch, d_in)
    codes: torch.Tensor  # (batch, d_sae), zeros where a latent is off


class Codes(NamedTuple):
    """A batch's latent codes, detached: ``values`` (n,) at (``rows``, ``cols``), each (n,), a
    pair listed twice summing; or, when ``cols`` is None, ``values`` is the dense (batch, d_sae)
    matrix. Sparse architectures keep the first form so training never builds the dense one."""

    values: torch.Tensor
    cols: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    shape: tuple[int, int] = (0, 0)  # (batch, d_sae)

    @classmethod
    def of_dense(cls, codes: torch.Tensor) -> Codes:
        """Wrap dense (batch, d_sae) codes."""
        return cls(codes.detach(), shape=tuple(codes.shape))

    def dense(self) -> torch.Tensor:
        """(batch, d_sae) codes (built here for the sparse form)."""
        if self.cols is None:
            return self.values
        out = self.values.new_zeros(self.shape[0] * self.shape[1])
        return out.index_add_(0, self.rows * self.shape[1] + self.cols, self.values).view(self.shape)

    def fired(self) -> torch.Tensor:
        """(d_sae,) bool: the latents non-zero in at least one row."""
        if self.cols is None:
            return (self.values != 0).any(0)
        hits = torch.zeros(self.shape[1], dtype=torch.int32, device=self.values.device)
        return hits.index_add_(0, self.cols, (self.values != 0).int()) > 0

    def nonzero_values(self) -> torch.Tensor:
        """The non-zero codes, flat, in no particular order."""
        return self.values[self.values != 0]

    def l0(self) -> torch.Tensor:
        """Mean number of non-zero codes per row (a pair listed twice counts twice)."""
        return (self.values != 0).sum().float() / max(self.shape[0], 1)


class TrainStep(NamedTuple):
    """What a training step returns: the loss to minimise and its parts (for curves)."""

    loss: torch.Tensor
    x_hat: torch.Tensor
    latents: Codes  # the batch's codes, sparse where the architecture is
    parts: dict[str, torch.Tensor]  # e.g. mse, l1, l0, auxk; detached scalars

    @property
    def codes(self) -> torch.Tensor:
        """(batch, d_sae) dense codes, built on demand (the trainer never asks)."""
        return self.latents.dense()


@dataclass
class TrainState:
    """Trainer state an architecture may read or keep across steps."""

    step: int = 0
    tokens_since_fired: torch.Tensor | None = None  # (d_sae,) for dead-latent detection
    grad: torch.Tensor | None = None  # (batch, d_in) dLoss/dx from the model (g-SAE)
    scratch: dict[str, Any] = field(default_factory=dict)  # reused buffers, notes; never saved

    def buffer(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor | None:
        """A tensor of ``shape`` kept across steps (a fresh 75 MB tensor per step costs as
        many page faults as its size: ~50 ms on a CPU); None under autocast, whose result
        dtype is not the weights'."""
        if torch.is_autocast_enabled(like.device.type):
            return None
        buf = self.scratch.get(name)
        if buf is None or buf.shape != shape or buf.dtype != like.dtype or buf.device != like.device:
            buf = self.scratch[name] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return buf


ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {}


def register(name: str):
    """Class decorator: make an architecture loadable by the name written into cfg.json."""
    def deco(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
        cls.architecture = name
        ARCHITECTURES[name] = cls
        return cls
    return deco


class SparseAutoencoder(nn.Module):
    """x -> codes = encode(x) -> x_hat = codes @ W_dec + b_dec, decoder rows of unit norm."""

    architecture: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        w = torch.randn(d_sae, d_in)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w.clone())  # (d_sae, d_in)
        self.W_enc = nn.Parameter(w.t().contiguous())  # (d_in, d_sae), tied at init
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # ------------------------------------------------------------ the interface
    def pre_acts(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, d_sae) encoder pre-activations (into ``out`` when given, without autograd)."""
        if out is not None:
            return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc, out=out)
        return torch.addmm(self.b_enc, x - self.b_dec, self.W_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) latent codes at inference."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(batch, d_in) reconstruction from codes."""
        return codes @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        codes = self.encode(x)
        return ForwardOutput(self.decode(codes), codes)

    def training_step(self, x: torch.Tensor, state: TrainState) -> TrainStep:
        """Loss for one batch (training-time encoding may differ from ``encode``)."""
        raise NotImplementedError

    # ------------------------------------------------------------ trainer hooks
    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder rows to unit norm (the constraint every architecture keeps)."""
        self.W_dec.data /= self.W_dec.data.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Drop the part of W_dec's gradient that would only change row norms."""
        if self.W_dec.grad is None:
            return
        w = self.W_dec.data
        self.W_dec.grad.addcmul_(torch.linalg.vecdot(self.W_dec.grad, w)[:, None], w, value=-1)

    def after_step(self, codes: Codes, state: TrainState) -> None:
        """Called after each optimiser step (e.g. to update a learnt threshold)."""

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae


def mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the summed squared error (the usual SAE reconstruction loss)."""
    return (x_hat - x).pow(2).sum(-1).mean()


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of ``cfg.arch``."""
    load_architectures()
    if cfg.arch not in ARCHITECTURES:
        raise LatentLabError(f"unknown SAE architecture {cfg.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[cfg.arch](cfg)


def load_architectures() -> None:
    """Import every architecture module so each registers itself."""
    import importlib
    for name in ("relu", "topk", "batchtopk", "jumprelu", "mp", "gtopk"):
        try:
            importlib.import_module(f"engine.sae.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"engine.sae.{name}":
                raise
