"""Typed, versioned specs, each the one source of its defaults and choices: a training run
(``TrainSpec``), a capture (``CaptureSpec``), a steering recipe (``SteeringRecipe`` of
``RecipeItem``s) and a concept file (``ConceptSets``). The workspace manifest
(``engine.workspace``) and the app's session file are ``SpecFile``s too.

One validator for all of them: a spec made from bad values raises ``SpecError``, one
sentence naming the field and the value ("capture: field 'batch_size' should be a number
above 0, not 0"), never a pydantic traceback. A ``SpecFile`` carries its version as
``"format"``: older versions are read (``upgrade``), newer ones refused."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.errors import LatentLabError
from engine.models.base import MODEL_DTYPES
from engine.sae.base import SAEConfig, architectures

SENTENCE = "latentlab_sentence"  # a custom error whose message is the whole sentence


# ---------------------------------------------------------------------- errors
class SpecError(LatentLabError):
    """A bad value in a spec: ``field`` (dotted, e.g. ``selection.ids[1]``), the ``value``
    given and what was ``expected`` (None: the field is missing); or a whole ``sentence``."""

    def __init__(self, where: str, field: str, value: Any, expected: str | None,
                 sentence: str | None = None) -> None:
        self.where, self.field, self.value, self.expected, self.sentence = where, field, value, expected, sentence
        super().__init__(f"{where}: {self.describe()}")

    @property
    def shown(self) -> str:
        """The value as the user typed it: numbers bare, other text quoted, cut at 60 characters."""
        value = self.value
        if isinstance(value, str) and _is_number(value) or isinstance(value, (int, float)):
            return str(value)
        return f"{value!r:.60}"

    def describe(self, name: str | None = None) -> str:
        """The problem with the field called ``name`` (default: field 'x')."""
        if self.sentence:
            return self.sentence
        if not self.field:
            return f"expected {self.expected}, found {type(self.value).__name__}"
        name = name or f"field {self.field!r}"
        return f"{name} is missing" if self.expected is None else f"{name} should be {self.expected}, not {self.shown}"


_EXPECTED = {  # pydantic's error type -> what the value should be
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "path_type": "a string (a path)", "list_type": "a list", "dict_type": "a JSON object",
    "model_type": "a JSON object", "model_attributes_type": "a JSON object",
    "greater_than": "a number above {gt}", "greater_than_equal": "a number of at least {ge}",
    "less_than": "a number below {lt}", "less_than_equal": "a number of at most {le}",
    "literal_error": "{expected}", "string_too_short": "a non-empty string",
    "too_short": "a list of at least {min_length}",
}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _field(loc: tuple) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def spec_error(exc: ValidationError, where: str) -> SpecError:
    """The first of pydantic's errors as one SpecError."""
    err = exc.errors(include_url=False)[0]
    kind, field, value = err["type"], _field(err["loc"]), err.get("input")
    if kind == SENTENCE:  # raised by a model's own validator: loc is the model's place
        return SpecError(where, field, value, None, f"{field}: {err['msg']}" if field else err["msg"])
    if kind == "missing":
        return SpecError(where, field, None, None)
    if kind == "extra_forbidden":
        return SpecError(where, field, value, None, f"field {field!r} is unknown")
    if kind == "value_error":
        expected = str(err["ctx"]["error"])
    elif kind in _EXPECTED:
        ctx = {k: f"{v:g}" if isinstance(v, (int, float)) else v for k, v in err.get("ctx", {}).items()}
        expected = _EXPECTED[kind].format(**ctx)
    else:
        expected = err["msg"].removeprefix("Input should be ")
    return SpecError(where, field, value, expected)


def sentence(text: str) -> PydanticCustomError:
    """An error a validator raises when its message is a whole sentence."""
    return PydanticCustomError(SENTENCE, text)


def read_json(path: str | os.PathLike, where: str | None = None) -> Any:
    """A JSON file's content; LatentLabError naming the file when it cannot be read."""
    where = where or str(path)
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise LatentLabError(f"{where}: no such file") from None
    except OSError as exc:
        raise LatentLabError(f"{where}: cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise LatentLabError(f"{where}: not readable JSON ({exc})") from None
    except json.JSONDecodeError as exc:
        raise LatentLabError(f"{where}: not readable JSON (not valid JSON: {exc.msg} at line "
                             f"{exc.lineno}, column {exc.colno})") from None


# ---------------------------------------------------------------------- the base classes
class Spec(BaseModel):
    """A typed spec. ``parse`` it from what a user gave (a file, a form, the command line):
    a bad value raises SpecError, a LatentLabError (built from keywords in code, a bad value
    is a bug: pydantic's ValidationError). ``default`` and ``choices`` serve forms and parsers."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    what: ClassVar[str] = "spec"  # how an error names the spec

    @classmethod
    def parse(cls, data: Any, where: str | None = None, name: Callable[[str], str] | None = None):
        """``data`` as this spec; SpecError naming ``where`` and the field (as ``name(field)``
        words it, e.g. a command-line flag) otherwise."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            error = spec_error(exc, where or cls.what)
        if name is not None and error.field:
            raise LatentLabError(f"{error.describe(name(error.field))}") from None
        raise error from None

    @classmethod
    def load(cls, path: str | os.PathLike, where: str | None = None):
        """A JSON file as this spec; ``where`` (default: what it is and the path) leads each error."""
        where = where or f"{cls.what} {path}"
        return cls.parse(read_json(path, where), where)

    @classmethod
    def default(cls, field: str) -> Any:
        return cls.model_fields[field].get_default(call_default_factory=True)

    @classmethod
    def choices(cls, field: str) -> tuple:
        """The values a Literal field takes (empty for any other field)."""
        annotation = cls.model_fields[field].annotation
        return get_args(annotation) if get_origin(annotation) is Literal else ()


class SpecFile(Spec):
    """A spec saved as a JSON object whose ``"format"`` is its version: ``FORMAT`` is the one
    written; an older one is read through ``upgrade``; a newer one is refused."""

    FORMAT: ClassVar[int] = 1

    @model_validator(mode="before")
    @classmethod
    def _versioned(cls, data: Any) -> Any:
        data = cls.unwrap(data)
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        version = data.pop("format", cls.FORMAT)
        try:
            version = int(version)
        except (TypeError, ValueError):
            raise sentence(f"field 'format' should be a whole number, not {version!r:.40}") from None
        if version > cls.FORMAT:
            raise sentence(f"format {version} is newer than this LatentLab reads ({cls.FORMAT}); "
                           "update LatentLab")
        return cls.upgrade(data, version)

    @classmethod
    def unwrap(cls, data: Any) -> Any:
        """Another shape the file may have had, as a mapping (the default takes it as it is)."""
        return data

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """The fields of a file written in an older ``version`` as this one reads them."""
        return data

    @model_serializer(mode="wrap")
    def _with_format(self, handler: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
        return {"format": self.FORMAT, **handler(self)}  # inside another file too

    def to_data(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def write(self, path: str | os.PathLike) -> Path:
        """Write the file whole or not at all (a temporary file replaced); a file that would
        not change is left untouched (reopening only reads)."""
        path = Path(path)
        text = json.dumps(self.to_data(), indent=2) + "\n"
        if path.is_file() and path.read_text() == text:
            return path
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return path


# ---------------------------------------------------------------------- field types
PositiveInt = Annotated[int, Field(gt=0)]
Count = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1)]


def _texts(texts: list[str]) -> list[str]:
    kept = [t for t in texts if t.strip()]
    if not kept:
        raise ValueError("a list with at least one text")
    return kept


Texts = Annotated[list[str], AfterValidator(_texts)]  # blank texts dropped, at least one left
Words = Annotated[list[str], AfterValidator(lambda words: [w for w in words if w.strip()])]
StoredDtype = Literal["float16", "float32"]
ModelDtype = Literal[tuple(MODEL_DTYPES)]


def _architecture(name: str) -> str:
    known = architectures()
    if name not in known:
        raise ValueError(f"one of {', '.join(known)}")
    return name


Architecture = Annotated[str, AfterValidator(_architecture)]


# ---------------------------------------------------------------------- jobs
class CaptureSpec(Spec):
    """One capture (``engine.capture.capture``'s parameters): ``main.py capture`` and the
    Capture Activations dialog."""

    what: ClassVar[str] = "capture"
    model: Name
    source: Name
    hooks: Annotated[list[Name], Field(min_length=1)]
    out: Path
    max_tokens: PositiveInt | None = None  # rows to capture; None: the whole source
    resume: bool = False
    batch_size: PositiveInt = 8  # windows (or images) per forward pass
    ctx_len: Annotated[int, Field(ge=2)] = 128  # tokens per window, special tokens included
    dtype: StoredDtype = "float16"  # the stored rows' precision
    model_dtype: ModelDtype = "float32"  # the precision the model runs in

    def job_params(self) -> dict[str, Any]:
        """Keyword arguments of ``capture``."""
        return self.model_dump(include=set(CaptureSpec.model_fields))


class TrainSpec(Spec):
    """One SAE training run (``engine.sae.train_job.train_sae``'s parameters): ``main.py
    train-sae``, the Train SAE dialog and the demo."""

    what: ClassVar[str] = "train-sae"
    store: Path
    hook: Name
    out: Path  # the SAE's folder (SAELens layout), its curves and metrics
    arch: Architecture = "topk"
    expansion: PositiveInt = 8  # d_sae = expansion x d_in
    k: PositiveInt = 32  # latents per row (topk, batchtopk, gtopk) or steps (mp)
    batch_size: PositiveInt = 4096
    steps: PositiveInt | None = None  # optimiser steps; None: ``epochs`` over the training rows
    epochs: PositiveFloat = 1.0
    lr: PositiveFloat = 4e-4
    holdout: PositiveFloat = 0.05  # held-out share (below 1) or row count, for the metrics
    resume: bool = False
    seed: Count = 0
    checkpoint_every: PositiveInt = 200
    eval_model: str | None = None  # model spec for the spliced-in loss
    l1_coeff: PositiveFloat = SAEConfig.l1_coeff  # relu
    l0_coeff: PositiveFloat = SAEConfig.l0_coeff  # jumprelu

    def job_params(self) -> dict[str, Any]:
        """Keyword arguments of ``train_sae``."""
        return self.model_dump(include=set(TrainSpec.model_fields))


# ---------------------------------------------------------------------- steering
KINDS = ("concept", "latent", "direction")
LATENT_MODES = ("add", "clamp", "ablate", "mean-ablate")
_NEEDS = {"concept": ("positive", "negative"), "latent": ("sae", "latent"), "direction": ("vector",)}


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


class RecipeItem(Spec):
    """One intervention of a steering recipe (the dicts AppState carries; other keys, such
    as a view's slider ``range``, are kept).

    concept: hook, strength, positive and negative texts (the direction is the difference
    of their mean activations). direction: hook, strength and the ``vector`` itself (a delta
    vector: the mean activation of one group of store rows minus another's; ``groups`` says
    which). latent: hook, strength, ``sae`` folder, ``latent`` and
    ``mode``: ``add`` (strength x decoder row), ``clamp`` (code set to strength), ``ablate``
    (code zeroed) or ``mean-ablate`` (code set to ``mean``, its mean over a store's rows)."""

    model_config = ConfigDict(extra="allow", frozen=False)
    what: ClassVar[str] = "steering item"
    kind: Literal[KINDS]
    hook: Name
    strength: float = 0.0
    enabled: bool = True
    name: str | None = None
    positive: Texts | None = None
    negative: Texts | None = None
    sae: Annotated[Name | None, BeforeValidator(_path_text)] = None  # an SAE folder
    latent: int | None = None
    mode: Literal[LATENT_MODES] | None = None
    mean: float | None = None
    vector: Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _complete(self) -> RecipeItem:
        """The fields the kind needs are there; the kind's defaults are filled in."""
        for field in _NEEDS[self.kind]:
            if getattr(self, field) is None:
                raise sentence(f"field {field!r} is missing; a {self.kind} item needs "
                               f"{' and '.join(_NEEDS[self.kind])}")
        if self.kind == "latent":
            self.mode = self.mode or "add"
            if self.mode == "mean-ablate" and self.mean is None:
                raise sentence("field 'mean' is missing; mean-ablation needs the latent's mean "
                               "activation over a store")
        self.name = self.name or (f"latent {self.latent}" if self.kind == "latent" else self.kind)
        return self

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SteeringRecipe(SpecFile):
    """The interventions applied together, in order: a recipe file, the ``steering`` of a
    session file, and what ``main.py steer --recipe`` reads. Format 1 was a bare list of items."""

    what: ClassVar[str] = "steering recipe"
    FORMAT: ClassVar[int] = 2
    items: list[RecipeItem] = []

    @classmethod
    def unwrap(cls, data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            return {"format": 1, "items": list(data)}
        if isinstance(data, Mapping) and "steering" in data and "items" not in data:  # a session file
            return cls.unwrap(data["steering"])
        return data

    def dicts(self) -> list[dict[str, Any]]:
        return [item.as_dict() for item in self.items]


class ConceptSets(Spec):
    """A concept file: the texts about the concept, the contrasting ones and, optionally,
    the words that count as naming it."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    what: ClassVar[str] = "concept file"
    positive: Texts
    negative: Texts
    words: Words = []
