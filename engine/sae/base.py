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


class TrainStep(NamedTuple):
    """What a training step returns: the loss to minimise and its parts (for curves)."""

    loss: torch.Tensor
    x_hat: torch.Tensor
    codes: torch.Tensor
    parts: dict[str, torch.Tensor]  # e.g. mse, l1, l0, auxk; detached scalars


@dataclass
class TrainState:
    """Trainer state an architecture may read or keep across steps."""

    step: int = 0
    tokens_since_fired: torch.Tensor | None = None  # (d_sae,) for dead-latent detection
    grad: torch.Tensor | None = None  # (batch, d_in) dLoss/dx from the model (g-SAE)


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
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, d_sae) encoder pre-activations."""
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
        self.W_dec.grad -= (self.W_dec.grad * w).sum(1, keepdim=True) * w

    def after_step(self, codes: torch.Tensor, state: TrainState) -> None:
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
    _load_architectures()
    if cfg.arch not in ARCHITECTURES:
        raise LatentLabError(f"unknown SAE architecture {cfg.arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[cfg.arch](cfg)


def _load_architectures() -> None:
    """Import every architecture module so each registers itself."""
    import importlib
    for name in ("relu", "topk", "batchtopk", "jumprelu", "mp", "gtopk"):
        try:
            importlib.import_module(f"engine.sae.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"engine.sae.{name}":
                raise
