"""The one interface every sparse autoencoder offers, its config, its codes, and the registry
that maps an architecture name (as written into cfg.json) to its class.

Adding an architecture is one file: a module in ``engine/sae/`` whose class subclasses
``SparseAutoencoder``, defines ``encode`` and ``training_step``, and is decorated
``@register("name", summary=..., order=..., saelens=...)`` at the top level. The registry
imports every such module, so the name is then a choice of ``train-sae --arch`` and of the
Train SAE dialog, and ``build_sae`` and ``load_sae`` know it. Everything else LatentLab does with an SAE (encoding for statistics,
encoding a few latents, whether it takes k, how its files look in SAELens's layout) is read
from class attributes and methods whose defaults here fit a plain W_enc/W_dec SAE. A file
outside the package registers the same way when the environment variable
``LATENTLAB_SAE_PLUGINS`` names it: module names or .py paths, separated by os.pathsep
(``LATENTLAB_SAE_PLUGINS=~/my_sae.py latentlab train-sae --arch mine ...``).

Shapes: x (batch, d_in); codes (batch, d_sae); W_enc (d_in, d_sae); W_dec (d_sae, d_in)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import nn

from engine.errors import LatentLabError

if TYPE_CHECKING:
    from engine.sae.saelens import SAELensFile

PLUGINS_ENV = "LATENTLAB_SAE_PLUGINS"  # os.pathsep-separated module names or .py files


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
    """A batch's latent codes, detached, in one of two forms. Sparse: ``values`` (nnz,) at
    (``rows``, ``cols``), each (nnz,) int64, a pair listed twice summing. Dense: ``rows`` and
    ``cols`` are None and ``values`` is the (n_rows, d_sae) matrix. A training step keeps a
    sparse architecture's codes sparse, in any order and with zeros (so training never builds
    the dense matrix); ``nonzero``, ``of_picks`` and ``SparseAutoencoder.encode_codes`` give the
    canonical sparse form the feature statistics fold in: row-major, latents ascending in a
    row, float32, non-zero codes only."""

    rows: torch.Tensor | None  # (nnz,) int64 row within the batch
    cols: torch.Tensor | None  # (nnz,) int64 latent
    values: torch.Tensor  # (nnz,), or (n_rows, d_sae) dense
    n_rows: int
    d_sae: int = 0

    @classmethod
    def of_dense(cls, codes: torch.Tensor) -> Codes:
        """Wrap dense (batch, d_sae) codes."""
        return cls(None, None, codes.detach(), codes.shape[0], codes.shape[1])

    @classmethod
    def nonzero(cls, codes: torch.Tensor) -> Codes:
        """The non-zero entries of dense codes (batch, d_sae), canonical."""
        row, latent = torch.nonzero(codes, as_tuple=True)  # row-major
        return cls(row, latent, codes[row, latent].float(), len(codes), codes.shape[1])

    @classmethod
    def of_picks(cls, values: torch.Tensor, indices: torch.Tensor, d_sae: int) -> Codes:
        """Canonical codes from each row's picks: values and indices (batch, k), distinct
        latents in a row, in any order; zero values (ReLU'd picks) are not firing latents."""
        indices, order = indices.sort(dim=1)
        values = values.gather(1, order).float()
        on = values != 0
        row = torch.arange(len(values), device=values.device)[:, None].expand_as(indices)
        return cls(row[on], indices[on], values[on], len(values), d_sae)

    @property
    def is_dense(self) -> bool:
        return self.cols is None

    @property
    def shape(self) -> tuple[int, int]:
        """(batch, d_sae)."""
        return self.n_rows, self.d_sae

    def dense(self) -> torch.Tensor:
        """(batch, d_sae) codes (built here for the sparse form)."""
        if self.cols is None:
            return self.values
        out = self.values.new_zeros(self.n_rows * self.d_sae)
        return out.index_add_(0, self.rows * self.d_sae + self.cols, self.values).view(self.shape)

    def fired(self) -> torch.Tensor:
        """(d_sae,) bool: the latents non-zero in at least one row."""
        if self.cols is None:
            return (self.values != 0).any(0)
        hits = torch.zeros(self.d_sae, dtype=torch.int32, device=self.values.device)
        return hits.index_add_(0, self.cols, (self.values != 0).int()) > 0

    def nonzero_values(self) -> torch.Tensor:
        """The non-zero codes, flat, in no particular order."""
        return self.values[self.values != 0]

    def l0(self) -> torch.Tensor:
        """Mean number of non-zero codes per row (a pair listed twice counts twice)."""
        return (self.values != 0).sum().float() / max(self.n_rows, 1)


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


class SparseAutoencoder(nn.Module):
    """x -> codes = encode(x) -> x_hat = codes @ W_dec + b_dec, decoder rows of unit norm.

    A subclass defines ``encode`` and ``training_step``; the class attributes and the methods
    under "statistics and views" and "files" say the rest, and their defaults fit an SAE
    whose codes depend on whole rows and whose files hold W_enc, W_dec, b_enc and b_dec."""

    architecture: ClassVar[str] = ""  # set by @register: the name in cfg.json and on the CLI
    summary: ClassVar[str] = ""  # set by @register: a few words for menus ("k largest latents per row")
    list_order: ClassVar[int] = 100  # set by @register: place in the lists (CLI, dialog); then by name
    takes_k: ClassVar[bool] = False  # reads cfg.k (latents per row, or steps)
    k_means: ClassVar[str] = "latents per row"  # what k counts, for the dialog's label
    options: ClassVar[tuple[str, ...]] = ()  # training options it reads (SAEConfig fields: l1_coeff)
    needs_grad: ClassVar[bool] = False  # trains on (x, dLoss/dx) batches: state.grad
    elementwise: ClassVar[bool] = False  # a code depends only on its own pre-activation
    saelens_architecture: ClassVar[str | None] = None  # cfg.json "architecture"; None: ours
    saelens_reads: ClassVar[dict[str, int]] = {}  # SAELens architectures it loads -> priority
    file_threshold: ClassVar[bool] = False  # its files carry threshold (d_sae,)
    tied_encoder: ClassVar[bool] = False  # W_enc = W_dec.T and b_enc unused: neither in files

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

    # ------------------------------------------------------------ statistics and views
    def encode_codes(self, x: torch.Tensor) -> Codes:
        """``encode(x)`` as Codes: dense here; an architecture that picks its latents
        (TopK) hands them over in the canonical sparse form, never building the dense matrix."""
        return Codes.of_dense(self.encode(x))

    def activation(self, pre: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        """Codes from pre-activations (batch, n) of the latents ``cols`` (None: all of them);
        only ``elementwise`` architectures have one."""
        raise NotImplementedError(f"{type(self).__name__} is not elementwise")

    def column_encoder(self, cols: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """x (batch, d_in) -> (batch, len(cols)) codes of the latents ``cols`` from only those
        columns of W_enc, for ``elementwise`` architectures; None for the others (encode whole
        rows and pick the columns)."""
        if not self.elementwise:
            return None
        W, b = self.W_enc[:, cols].contiguous(), self.b_enc[cols]  # noqa: N806
        return lambda x: self.activation(torch.addmm(b, x - self.b_dec, W), cols)

    # ------------------------------------------------------------ files (engine.sae.io)
    def saelens_fields(self) -> dict[str, Any]:
        """Top-level cfg.json fields of its SAELens config (e.g. "k")."""
        return {}

    def saelens_metadata(self) -> dict[str, Any]:
        """Fields added to cfg.json's "metadata"."""
        return {}

    def file_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors its file holds, by SAELens's names, on the CPU."""
        def out(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu").contiguous()
        tensors = {"W_enc": out(self.W_enc), "W_dec": out(self.W_dec), "b_enc": out(self.b_enc),
                   "b_dec": out(self.b_dec)}
        if self.tied_encoder:
            del tensors["W_enc"], tensors["b_enc"]
        if self.file_threshold:
            tensors["threshold"] = self.threshold_for_file()
        return tensors

    def threshold_for_file(self) -> torch.Tensor:
        """(d_sae,) threshold as SAELens stores it, on the CPU (``file_threshold`` architectures)."""
        raise NotImplementedError

    @classmethod
    def file_shapes(cls, cfg: SAEConfig) -> dict[str, tuple[int, ...]]:
        """SAELens tensor name -> the shape a file must hold for ``cfg``."""
        d_in, d_sae = cfg.d_in, cfg.d_sae
        shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,)}
        if cls.file_threshold:
            shapes["threshold"] = (d_sae,)
        if cls.tied_encoder:
            del shapes["W_enc"], shapes["b_enc"]
        return shapes

    @classmethod
    def state_from_file(cls, cfg: SAEConfig, tensors: dict[str, torch.Tensor],
                        where: Path) -> dict[str, torch.Tensor]:
        """The state dict from a file's (shape-checked) tensors; ``where`` names the file in errors."""
        state = {name: tensors[name] for name in ("W_enc", "W_dec", "b_enc", "b_dec") if name in tensors}
        if cls.file_threshold:
            state.update(cls.threshold_from_file(tensors["threshold"], where))
        if cls.tied_encoder:
            state["W_enc"] = tensors["W_dec"].t().contiguous()
            state["b_enc"] = tensors["W_dec"].new_zeros(cfg.d_sae)
        return state

    @classmethod
    def threshold_from_file(cls, threshold: torch.Tensor, where: Path) -> dict[str, torch.Tensor]:
        """State-dict entries from a file's threshold (d_sae,) (``file_threshold`` architectures)."""
        raise NotImplementedError

    @classmethod
    def from_saelens(cls, file: SAELensFile) -> tuple[SAEConfig, dict[str, torch.Tensor]] | None:
        """The config and LatentLab-convention tensors of a folder SAELens wrote whose
        architecture is one of ``saelens_reads``; None declines it (the next reader of that
        name, by priority, is asked)."""
        return None

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


# ---------------------------------------------------------------- the registry
ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {}
_builtins_loaded = False


def register(name: str, *, summary: str = "", order: int = 100, saelens: str | None = None,
             reads: dict[str, int] | None = None):
    """Class decorator: make an architecture loadable by the name written into cfg.json, with
    a few words for menus, its place in the lists, the SAELens architecture it saves as and
    those it reads (default: the one it saves as) with their priorities."""
    def deco(cls: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
        known = ARCHITECTURES.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise LatentLabError(f"SAE architecture {name!r} is registered twice: by "
                                 f"{known.__module__}.{known.__qualname__} and {cls.__module__}.{cls.__qualname__}")
        cls.architecture, cls.summary, cls.list_order = name, summary, order
        if saelens is not None:
            cls.saelens_architecture = saelens
            cls.saelens_reads = reads if reads is not None else {saelens: 0}
        ARCHITECTURES[name] = cls
        return cls
    return deco


_REGISTERS = re.compile(r"^@(base\.)?register\(", re.M)  # a module that registers an architecture


def load_architectures() -> None:
    """Import every module of ``engine.sae`` that registers an architecture (a top-level
    ``@register(`` or ``@base.register(`` line), once, then the modules ``LATENTLAB_SAE_PLUGINS`` names (module
    names or .py files, separated by os.pathsep), each imported once."""
    global _builtins_loaded
    if not _builtins_loaded:
        for path in sorted(Path(__file__).parent.glob("*.py")):
            if path.stem != "base" and _REGISTERS.search(path.read_text(encoding="utf-8")):
                importlib.import_module(f"{__package__}.{path.stem}")
        _builtins_loaded = True
    for entry in os.environ.get(PLUGINS_ENV, "").split(os.pathsep):
        if entry.strip():
            _import_plugin(entry.strip())


def _import_plugin(entry: str) -> None:
    """Import one plugin: a module name, or a .py file (in sys.modules under a name made of
    its stem and a hash of its path, so each file is imported once)."""
    try:
        if not entry.endswith(".py"):
            importlib.import_module(entry)
            return
        path = Path(entry).expanduser().resolve()
        name = f"latentlab_sae_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
        if name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None:
            raise ImportError(f"not a Python file: {path}")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    except LatentLabError:
        raise
    except Exception as exc:
        raise LatentLabError(f"{PLUGINS_ENV} names {entry!r}, which could not be imported: "
                             f"{type(exc).__name__}: {exc}") from exc


def architectures() -> list[str]:
    """The registered architecture names by ``list_order``, then by name (the choices of
    train-sae --arch and of the Train SAE dialog)."""
    load_architectures()
    return sorted(ARCHITECTURES, key=lambda name: (ARCHITECTURES[name].list_order, name))


def architecture(name: str) -> type[SparseAutoencoder]:
    """The class registered as ``name``."""
    load_architectures()
    if name not in ARCHITECTURES:
        raise LatentLabError(f"unknown SAE architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name]


def takes_k(name: str) -> bool:
    """Whether architecture ``name`` reads k (latents per row, or pursuit steps)."""
    return architecture(name).takes_k


def build_sae(cfg: SAEConfig) -> SparseAutoencoder:
    """A freshly initialised SAE of ``cfg.arch``."""
    return architecture(cfg.arch)(cfg)
