"""Study specs: frozen dataclasses loaded from YAML with yaml.safe_load and a strict loader.

Owns the spec's shape, its validation (one-line errors naming the field and the value), the
expansion of arms × search × seeds into members, and every quantity derived from a spec (steps per
epoch, decay timescale, grid size, planned members). Imports no torch, Ray, Optuna or MLflow.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .datasets import DATASETS
from .registry import CONV_CHOICES, DECAY_MODES, MAX_DEPTH, MODEL_NAMES, OPTIMIZER_SETTINGS, OPTIMIZERS, arm_name, known_model, model_depth

SCHEDULES = ("cosine", "constant", "step")
SAMPLERS = ("grid", "random", "qmc", "tpe", "gp")
LANDSCAPE_METRICS = ("test_error", "test_loss", "train_loss")
MAX_GRID_POINTS = 10_000  # per arm and seed: a grid larger than this is almost surely a typo
# Values no study can run: past these a number is a typo (an allocation no machine has, a run of centuries).
HARD_LIMITS = {"train.epochs": 100_000, "train.batch_size": 1_000_000, "train.eval_batch_size": 1_000_000,
               "data.train_subset": 100_000_000, "data.test_subset": 100_000_000,
               "data.synthetic_train": 1_000_000, "data.synthetic_test": 1_000_000,  # 3 GB of 32×32 RGB each
               "search.trials": 1_000_000, "execution.members_per_trial": 100_000, "execution.max_failures": 1_000,
               "execution.max_concurrent": 1_000_000}
MAX_SEEDS = 1_000
MAX_DESCRIPTION = 5_000                 # MLflow refuses a run description past 20,000 characters
HOME_ENTRIES = ("mlflow.db", "artifacts")  # what a studies' home holds beside the studies' folders
# A study past either size is refused unless the command says --allow-large: it is most likely a typo, and if
# not, the user has seen its cost. 10,000 members at 200 epochs stay allowed.
LARGE_MEMBERS = 20_000
LARGE_MEMBER_EPOCHS = 5_000_000
MAX_SPEC_BYTES = 256 * 1024  # a spec is a page of YAML; anything near this size is not one
# per-epoch metrics (docs/science.md), in the engine's rows and the MLflow records: every member has them all
# but PRECONDITIONER_METRICS, which only optimizers with a per-weight preconditioner have
EPOCH_METRICS = ("train_loss", "test_loss", "test_error", "weight_norm", "effective_lr", "angular_update",
                 "lr", "epoch_time", "wall_time", "diverged", "angular_equilibrium", "head_norm", "decay_spread",
                 "norm_sqrt_v_corr")
# of those, the ones only an optimizer with a per-weight preconditioner (Adam, Adagrad) has (study/diagnostics.py)
PRECONDITIONER_METRICS = ("decay_spread", "norm_sqrt_v_corr")
# the last epoch's row of such a member also holds, under CHANNELS, each decayed tensor's per-channel weight norms
# and mean √v̂ (diagnostics.channel_records); the driver records them as the member run's CHANNELS_ARTIFACT
CHANNELS = "channels"
CHANNELS_ARTIFACT = "diagnostics/channels.json"


class SpecError(ValueError):
    """A spec or flag is invalid. str(e) is one line naming the field and the value."""


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "digits"         # digits | cifar10 | cifar100 | parquet | synthetic | imagefolder
    path: str | None = None         # parquet: folder with train/test.parquet; cifar: download root;
                                    # imagefolder: folder with train/<class>/*.png and test/<class>/*.png
    train_subset: int | None = None  # keep the first n training images of a fixed shuffle
    test_subset: int | None = None   # keep the first n test images of a fixed shuffle
    crop_padding: int | None = None  # pixels, at most half the image side; default 4 for 32×32 images, 0 for digits
    flip: bool | None = None         # random horizontal flip; default on for CIFAR, off for digits
    synthetic_train: int = 2048     # images, synthetic only
    synthetic_test: int = 512


@dataclass(frozen=True)
class ModelSpec:
    name: str = "resnet8"  # resnet8/20/32/44/56/110, preact_resnet18
    width: int = 1         # channel multiplier


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 10
    batch_size: int = 128           # images per step, shared by every member of an array
    schedule: str = "cosine"        # cosine | constant | step; multiplier s_t of the base lr
    warmup_epochs: float = 0.0      # linear warm-up, in epochs
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of the run
    gamma: float = 0.1              # step schedule: factor at each milestone
    seed: int = 0                   # data order and augmentation, shared by every member of an array
    device: str = "auto"            # auto | cpu | cuda
    eval_batch_size: int | None = None  # test images per forward pass; null: 1024 on CUDA, 64 on a CPU (faster there)
    compile: bool | str | None = None  # torch.compile the array step's forward and loss: auto (or null): on for CUDA
    precision: str = "auto"         # auto | fp32 | bf16 (bfloat16 autocast); auto: bf16 on CUDA, fp32 on a CPU
    channels_last: bool | str | None = None  # channels-last activations and conv weights: auto (or null): on for CUDA
    cudnn_benchmark: bool | str | None = None  # cuDNN autotunes its convolutions: auto (or null): on for CUDA
    conv: str = "auto"              # member convolutions: auto | grouped | bmm (auto: the device's measured table, else grouped)
    cuda_graph: bool = False        # record the whole step once as a CUDA graph and replay it (static input buffers;
    #                                 on a CPU the same static-buffer path runs without recording)


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    points: int | None = None  # grid points on this axis; default search.points


@dataclass(frozen=True)
class ArmSpec:
    optimizer: str                  # a name of study/registry.py: sgd | adam | adagrad | lion | rmsprop
    decay: str                      # coupled | decoupled | independent
    lr: Range
    weight_decay: Range
    # the optimizer's own settings as written (momentum: 0.9 beside optimizer: sgd), checked against its options
    # dataclass in study/registry.py; unset = that optimizer's default. Sorted (name, value) pairs: hashable
    options: tuple[tuple[str, object], ...] = ()

    @property
    def name(self) -> str:
        return arm_name(self.optimizer, self.decay)


@dataclass(frozen=True)
class SearchSpec:
    sampler: str = "grid"           # grid | random | qmc | tpe | gp
    points: int = 8                 # grid points per axis (log spaced)
    trials: int | None = None       # settings per arm for non-grid samplers
    seeds: tuple[int, ...] = (0,)   # repeats of every setting (an Optuna user attribute, not a searched parameter)
    metric: str = "test_error"      # final metric Optuna minimizes and `study export` maps by default
    refine: int = 0                 # grids: rounds that add weight_decay columns beyond an edge where rows' best λ lies


@dataclass(frozen=True)
class ExecutionSpec:
    members_per_trial: int = 16     # K: members trained together in one array (one Ray trial)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0     # a fraction packs several arrays onto one GPU
    max_concurrent: int | None = None
    max_failures: int = 3           # Ray Tune retries of a failed trial (resumes from its checkpoint)


@dataclass(frozen=True)
class TrackingSpec:
    experiment: str | None = None   # MLflow experiment; default: the study name
    curve_every: int = 1            # epochs between Optuna learning-curve points (the last epoch always has one):
                                    # each point is a store write per member (bench/README.md "The control plane")


@dataclass(frozen=True)
class MemberSpec:
    optimizer: str
    decay: str
    lr: float
    weight_decay: float
    seed: int = 0
    options: tuple[tuple[str, object], ...] = ()   # the optimizer's own settings, as in ArmSpec

    @property
    def arm(self) -> str:
        return arm_name(self.optimizer, self.decay)

    def array_key(self) -> tuple:
        """Members with equal keys may share an array: same optimizer, decay and optimizer settings.
        Seeds may differ: a member's seed fixes its initial weights; the array's batches follow train.seed."""
        return (self.optimizer, self.decay, *sorted(self.optimizer_kwargs().items()))

    def key(self, study: str) -> str:
        """The member's stable identity: resume and retries use it so a member is recorded once."""
        return f"{study}|{self.arm}|lr={self.lr!r}|weight_decay={self.weight_decay!r}|seed={self.seed}"

    def optimizer_kwargs(self) -> dict:
        """The optimizer's own settings, defaults filled in (study/registry.py)."""
        return OPTIMIZERS[self.optimizer].resolve(dict(self.options))

    def to_dict(self) -> dict:
        """Plain data with the settings written flat, as in a spec (momentum: 0.9); from_dict reads it back."""
        return flat_options(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, raw: dict) -> "MemberSpec":
        """The inverse of to_dict; also reads the form recorded before the options were gathered (every optimizer's
        settings as fields, unset ones None: a checkpoint or spec.json of an older version)."""
        return cls(**_gather_options(cls, raw, lambda name, value: tuple(value) if isinstance(value, list) else value))


@dataclass(frozen=True)
class StudySpec:
    name: str
    data: DataSpec = field(default_factory=DataSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    arms: tuple[ArmSpec, ...] = ()
    search: SearchSpec = field(default_factory=SearchSpec)
    execution: ExecutionSpec = field(default_factory=ExecutionSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    members: tuple[MemberSpec, ...] = ()
    description: str = ""

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def to_dict(self) -> dict:
        """Plain data (JSON-safe) that spec_from_dict turns back into an equal spec: what a study records."""
        out = dataclasses.asdict(self)
        out["arms"] = [flat_options(a) for a in out["arms"]]
        out["members"] = [flat_options(m) for m in out["members"]]
        return out

    def identity(self) -> str:
        """What a study's numbers depend on, as 16 hex digits: its data, model, train, arms, members and search
        sections (not execution or tracking, which may change between a run and its resume). A name that is
        recorded under another identity is refused, so that records of two specs never mix."""
        import hashlib
        import json

        part = {k: _non_default(getattr(self, k)) for k in ("data", "model", "train", "arms", "members", "search")}
        return hashlib.sha256(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flat_options(d: dict) -> dict:
    """An arm's or member's plain data with its `options` pairs written as keys of their own, as a spec has them."""
    out = {k: v for k, v in d.items() if k != "options"}
    out.update({k: list(v) if isinstance(v, tuple) else v for k, v in d.get("options") or ()})
    return out


def _gather_options(cls, raw: dict, coerce) -> dict:
    """The fields of an arm or member (`cls`) from its flat form: keys that are no field of `cls` are its optimizer's
    settings, each `coerce(name, value)`, gathered sorted into `options`. A None setting is unset (the recorded form
    of older versions names every optimizer's settings, unset ones None)."""
    fields = {f.name for f in dataclasses.fields(cls)} - {"options"}
    out = {k: v for k, v in raw.items() if k in fields}
    given = dict(raw.get("options") or ())  # a form with the pairs gathered already
    given.update({k: v for k, v in raw.items() if k not in fields and k != "options"})
    out["options"] = tuple(sorted((k, coerce(k, v)) for k, v in given.items() if v is not None))
    return out


# values that also count as a field's default in the identity: train.compile was false by default until it became
# auto (on for CUDA), so a spec recorded before keeps its identity, and writing auto is the same as leaving it out
AS_DEFAULT = {("TrainSpec", "compile"): ("auto", False)}  # an explicit false on CUDA differs in rounding only,
#                                                            and each member run's settings.compile tag says what ran


def _non_default(v):
    """A spec section as plain data without the fields left at their defaults, so that a field added later
    with a default does not change the identity of the specs recorded before it. An arm's or member's settings
    count as its own keys (as they were before they were gathered into `options`)."""
    if dataclasses.is_dataclass(v):
        out = {}
        for f in dataclasses.fields(v):
            value = getattr(v, f.name)
            if f.name == "options":
                out.update({k: _non_default(x) for k, x in value})
                continue
            default = f.default if f.default is not dataclasses.MISSING else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
            if default is dataclasses.MISSING or (value != default
                                                  and value not in AS_DEFAULT.get((type(v).__name__, f.name), ())):
                out[f.name] = _non_default(value)
        return out
    if isinstance(v, (list, tuple)):
        return [_non_default(x) for x in v]
    return v


# --------------------------------------------------------------------------- strict loading

def _fail(file, where: str, msg: str):
    raise SpecError(f"{file}: invalid {where}: {msg}" if file else f"invalid {where}: {msg}")


def excerpt(value, limit: int = 60) -> str:
    """repr(value) cut to a short excerpt: an error line quotes what it refuses, never a whole document."""
    r = repr(value)
    return r if len(r) <= limit else f"{r[:limit - 12]}… ({len(r)} chars)"


_NUMBER_TEXT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.?(inf|nan|infinity)",
                          re.IGNORECASE | re.ASCII)


def _coerce(value, tp, file, where):
    """Check `value` against the annotation `tp`; build nested dataclasses. Ints are accepted as floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        first = None
        for tp_i in inner:  # the first member of the union the value fits
            try:
                return _coerce(value, tp_i, file, where)
            except SpecError as e:
                first = first or e
        raise first
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, file, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(file, where, f"expected a list, but got {where.split('.')[-1]}={excerpt(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], file, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(file, where, f"expected {len(args)} values, but got {where.split('.')[-1]}={excerpt(value)}")
        return tuple(_coerce(v, a, file, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    key = where.split(".")[-1]
    if tp is bool:
        if not isinstance(value, bool):
            _fail(file, where, f"expected true or false, but got {key}={excerpt(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(file, where, f"expected an integer, but got {key}={excerpt(value)}")
        return value
    if tp is float:
        if isinstance(value, str):  # a quoted number ("1e-3"): the spellings of a YAML 1.2 number only, not
            # everything float() takes (0_5 is 5.0 there, full-width digits a number)
            if not _NUMBER_TEXT.fullmatch(value.strip()):
                _fail(file, where, f"expected a number, but got {key}={excerpt(value)}")
            text = value.strip()
            body = text.lstrip("+-")
            if body.startswith(".") and body[1:].isalpha():  # YAML's .inf / .nan (and .infinity): Python's inf, nan
                text = text[:len(text) - len(body)] + body[1:]
            value = float(text)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(file, where, f"expected a number, but got {key}={excerpt(value)}")
        if not math.isfinite(value):
            _fail(file, where, f"must be finite, but got {key}={excerpt(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            # YAML reads 2026-12-07 as a date, true/false as booleans and 1.5 as a number: quoting keeps the text
            hint = (f" (YAML read it as a {type(value).__name__}; put the value in quotes as you wrote it)"
                    if isinstance(value, (bool, int, float, datetime.date)) else "")
            _fail(file, where, f"expected a string{hint}, but got {key}={excerpt(value)}")
        return value
    raise TypeError(f"unsupported annotation {tp}")  # a bug in this module, not in the spec


def _build_options(cls, raw: dict, file, where: str) -> dict:
    """An arm's or member's raw mapping with its optimizer's settings gathered into `options`, each parsed as its
    options dataclass declares it (study/registry.py). A key that is another optimizer's setting is refused
    naming the optimizer's own; one that is no optimizer's setting is an unknown key."""
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "options"]
    entry = OPTIMIZERS.get(raw.get("optimizer")) if isinstance(raw.get("optimizer"), str) else None
    for key, value in raw.items():
        if key in fields or (value is None and key in OPTIMIZER_SETTINGS):  # None: unset, as older records have it
            continue
        loc = f"{where}.{key}" if where else str(key)
        if key not in OPTIMIZER_SETTINGS or key == "options":
            loc = loc if len(loc) <= 60 else f"{loc[:48]}… ({len(loc)} chars)"
            own = entry.option_names() if entry else OPTIMIZER_SETTINGS
            allowed = ", ".join([*fields, *own])
            raise SpecError(f"{file}: unknown key {loc!r}; allowed keys{' in ' + where if where else ''}: {allowed}"
                            if file else f"unknown key {loc!r}; allowed: {allowed}")
        if entry is not None and key not in entry.option_names():
            _fail(file, loc, f"optimizer {raw['optimizer']} takes no {key} (its settings: "
                             f"{', '.join(entry.option_names()) or 'none'}), but got {key}={excerpt(value)}")

    def coerce(name, value):
        types = entry.option_types() if entry else next(e.option_types() for e in OPTIMIZERS.values()
                                                        if name in e.option_names())
        return _coerce(value, types[name], file, f"{where}.{name}" if where else name)

    return _gather_options(cls, raw, coerce)


def _build(cls, raw, file, where):
    if not isinstance(raw, dict):
        _fail(file, where, f"expected a mapping of {cls.__name__} fields, but got {excerpt(raw)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if "options" in fields:  # an arm or member: its optimizer's settings are keys of its own
        raw = _build_options(cls, raw, file, where)
        kwargs = {k: (v if k == "options" else _coerce(v, hints[k], file, f"{where}.{k}" if where else k))
                  for k, v in raw.items()}
        missing = [n for n, f in fields.items() if n not in raw and f.default is dataclasses.MISSING]
        if missing:
            _fail(file, f"{where}.{missing[0]}" if where else missing[0],
                  f"required key is missing ({cls.__name__} needs {missing[0]})")
        return cls(**kwargs)
    for key in raw:
        if key not in fields:
            loc = f"{where}.{key}" if where else str(key)
            loc = loc if len(loc) <= 60 else f"{loc[:48]}… ({len(loc)} chars)"
            raise SpecError(f"{file}: unknown key {loc!r}; allowed keys{' in ' + where if where else ''}: "
                            f"{', '.join(fields)}" if file else f"unknown key {loc!r}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        loc = f"{where}.{name}" if where else name
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], file, loc)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            _fail(file, loc, f"required key is missing ({cls.__name__} needs {name})")
    return cls(**kwargs)


# --------------------------------------------------------------------------- validation

NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\Z")  # \Z: "$" would let a final newline through


def _check(cond: bool, file, where: str, msg: str):
    if not cond:
        _fail(file, where, msg)


def validate(spec: StudySpec, file=None) -> StudySpec:
    """Raise SpecError for the first invalid value; return the spec unchanged otherwise."""
    _check(bool(NAME_RE.match(spec.name)) and ".." not in spec.name, file, "name",
           f"a study name uses letters, digits, '_', '.', '-' (no path separators), but got name={excerpt(spec.name)}")
    _check(spec.name not in HOME_ENTRIES, file, "name", f"a study's folder would be the home's own "
           f"{spec.name} ({', '.join(HOME_ENTRIES)} are taken), but got name={excerpt(spec.name)}")
    _check(len(spec.description) <= MAX_DESCRIPTION, file, "description", f"at most {MAX_DESCRIPTION:,} characters "
           f"(MLflow keeps it on the parent run), but got {len(spec.description):,} characters")
    d, m, t, s, x = spec.data, spec.model, spec.train, spec.search, spec.execution
    _check(d.dataset in DATASETS, file, "data.dataset", f"must be one of {', '.join(DATASETS)}, but got dataset={excerpt(d.dataset)}")
    _check(not DATASETS.get(d.dataset) or not DATASETS[d.dataset].needs_path or d.path is not None, file, "data.path",
           f"dataset {d.dataset} needs a folder, but got path=None")
    _check(d.train_subset is None or d.train_subset >= 1, file, "data.train_subset", f"must be >= 1, but got train_subset={d.train_subset}")
    _check(d.test_subset is None or d.test_subset >= 1, file, "data.test_subset", f"must be >= 1, but got test_subset={d.test_subset}")
    _check(d.crop_padding is None or 0 <= d.crop_padding <= 16, file, "data.crop_padding", f"must lie in [0, 16], but got crop_padding={d.crop_padding}")
    _check(d.synthetic_train >= 1 and d.synthetic_test >= 1, file, "data.synthetic_train", f"sizes must be >= 1, but got {d.synthetic_train}, {d.synthetic_test}")
    _check(known_model(m.name), file, "model.name",
           f"must be one of {', '.join(MODEL_NAMES)} (any resnet of depth 6n+2 up to {MAX_DEPTH}), but got name={excerpt(m.name)}")
    _check(1 <= m.width <= 16, file, "model.width", f"must lie in [1, 16], but got width={m.width}")
    _check(t.epochs >= 1, file, "train.epochs", f"must be >= 1, but got epochs={t.epochs}")
    _check(t.batch_size >= 1, file, "train.batch_size", f"must be >= 1, but got batch_size={t.batch_size}")
    _check(t.eval_batch_size is None or t.eval_batch_size >= 1, file, "train.eval_batch_size",
           f"must be >= 1 (or null: chosen by the device), but got eval_batch_size={t.eval_batch_size}")
    _check(t.schedule in SCHEDULES, file, "train.schedule", f"must be one of {', '.join(SCHEDULES)}, but got schedule={excerpt(t.schedule)}")
    _check(0 <= t.warmup_epochs < t.epochs, file, "train.warmup_epochs", f"must lie in [0, epochs={t.epochs}), but got warmup_epochs={t.warmup_epochs}")
    _check(all(0 < q < 1 for q in t.milestones), file, "train.milestones", f"fractions of the run must lie in (0, 1), but got milestones={list(t.milestones)}")
    _check(0 < t.gamma <= 1, file, "train.gamma", f"must lie in (0, 1], but got gamma={t.gamma}")
    _check_float32(t.gamma, file, "train.gamma")
    _check(t.device in ("auto", "cpu", "cuda"), file, "train.device", f"must be auto, cpu or cuda, but got device={excerpt(t.device)}")
    _check(t.precision in ("auto", "fp32", "bf16"), file, "train.precision", f"must be auto, fp32 or bf16, but got precision={excerpt(t.precision)}")
    _check(t.compile in (None, True, False, "auto"), file, "train.compile", f"must be auto, true or false, but got compile={excerpt(t.compile)}")
    _check(t.channels_last in (None, True, False, "auto"), file, "train.channels_last", f"must be auto, true or false, but got channels_last={excerpt(t.channels_last)}")
    _check(spec.tracking.curve_every >= 1, file, "tracking.curve_every",
           f"epochs between learning-curve points: at least 1, but got curve_every={spec.tracking.curve_every}")
    _check(t.conv in CONV_CHOICES, file, "train.conv", f"must be one of {', '.join(CONV_CHOICES)}, but got conv={excerpt(t.conv)}")
    _check(t.cudnn_benchmark in (None, True, False, "auto"), file, "train.cudnn_benchmark", f"must be auto, true or false, but got cudnn_benchmark={excerpt(t.cudnn_benchmark)}")
    _check(s.sampler in SAMPLERS, file, "search.sampler", f"must be one of {', '.join(SAMPLERS)}, but got sampler={excerpt(s.sampler)}")
    _check(s.metric in LANDSCAPE_METRICS, file, "search.metric", f"must be one of {', '.join(LANDSCAPE_METRICS)}, but got metric={excerpt(s.metric)}")
    exp = spec.tracking.experiment
    if exp is not None:
        import unicodedata

        _check(isinstance(exp, str) and 0 < len(exp) <= 250 and exp == exp.strip(), file, "tracking.experiment",
               f"an MLflow experiment name of 1-250 characters without surrounding spaces, but got experiment={excerpt(exp)}")
        bad = [c for c in exp if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")]
        _check(not bad, file, "tracking.experiment", f"control or invisible formatting characters "
               f"({', '.join(f'U+{ord(c):04X}' for c in bad[:3])}) would show one name and store another, "
               f"but got experiment={excerpt(exp)}")
    _check(s.points >= 1, file, "search.points", f"must be >= 1, but got points={s.points}")
    _check(s.trials is None or s.trials >= 1, file, "search.trials", f"must be >= 1, but got trials={s.trials}")
    _check(0 <= s.refine <= 3, file, "search.refine", f"rounds of grid refinement must lie in [0, 3], but got refine={s.refine}")
    _check(s.refine == 0 or s.sampler == "grid", file, "search.refine", f"refinement completes grids; sampler {s.sampler} "
           f"places its own points, but got refine={s.refine}")
    _check(len(s.seeds) >= 1 and len(set(s.seeds)) == len(s.seeds), file, "search.seeds", f"need at least one seed and no repeats, but got seeds={excerpt(list(s.seeds))}")
    _check(all(0 <= seed < 2**32 for seed in s.seeds), file, "search.seeds", f"seeds must lie in [0, 2**32), but got seeds={excerpt(list(s.seeds))}")
    _check(0 <= t.seed < 2**32, file, "train.seed", f"must lie in [0, 2**32), but got seed={t.seed}")
    _check(s.sampler == "grid" or not spec.arms or s.trials is not None, file, "search.trials", f"sampler {s.sampler} needs trials (settings per arm), but got trials=None")
    _check(x.members_per_trial >= 1, file, "execution.members_per_trial", f"must be >= 1, but got members_per_trial={x.members_per_trial}")
    _check(0.01 <= x.cpus_per_trial <= 1024, file, "execution.cpus_per_trial", f"must lie in [0.01, 1024] (Ray's smallest useful share, and more CPUs than a node has), but got cpus_per_trial={x.cpus_per_trial}")
    _check(x.gpus_per_trial == 0 or 0.01 <= x.gpus_per_trial <= 1, file, "execution.gpus_per_trial", f"a GPU fraction must be 0 or lie in [0.01, 1], but got gpus_per_trial={x.gpus_per_trial}")
    _check(x.max_concurrent is None or x.max_concurrent >= 1, file, "execution.max_concurrent", f"must be >= 1 (or unset), but got max_concurrent={x.max_concurrent}")
    _check(x.max_failures >= 0, file, "execution.max_failures", f"must be >= 0, but got max_failures={x.max_failures}")
    _check_limits(spec, file)
    _check_applies(spec, file)
    _check(bool(spec.arms) or bool(spec.members), file, "arms", "a study needs arms (with a search) or an explicit members list, but got neither")
    seen = set()
    for i, a in enumerate(spec.arms):
        w = f"arms[{i}]"
        _check(a.optimizer in OPTIMIZERS, file, f"{w}.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, but got optimizer={excerpt(a.optimizer)}")
        _check(a.decay in DECAY_MODES, file, f"{w}.decay", f"must be one of {', '.join(DECAY_MODES)}, but got decay={excerpt(a.decay)}")
        _check(a.name not in seen, file, f"{w}", f"arm {a.name} appears twice")
        seen.add(a.name)
        for axis in ("lr", "weight_decay"):
            r = getattr(a, axis)
            _check(r.low > 0, file, f"{w}.{axis}.low", f"`low > 0` must hold for a log scale, but got low={r.low}")
            _check(r.high > 0, file, f"{w}.{axis}.high", f"`high > 0` must hold for a log scale, but got high={r.high}")
            _check(r.low <= r.high, file, f"{w}.{axis}", f"`low <= high` must hold, but got low={r.low}, high={r.high}")
            for end in ("low", "high"):
                _check_float32(getattr(r, end), file, f"{w}.{axis}.{end}")
            _check(r.points is None or r.points >= 1, file, f"{w}.{axis}.points", f"a grid needs >= 1 point, but got points={r.points}")
            n_axis = r.points or s.points
            _check(r.low < r.high or n_axis == 1 or s.sampler != "grid", file, f"{w}.{axis}",
                   f"low == high gives {n_axis} identical grid points (every member {n_axis} times); "
                   f"use points: 1, but got low={r.low}, high={r.high}, points={n_axis}")
        n = grid_size(a, s)
        _check(s.sampler != "grid" or n <= MAX_GRID_POINTS, file, f"{w}", f"a grid of {n} points per seed exceeds {MAX_GRID_POINTS}")
        if s.sampler == "grid" and n <= MAX_GRID_POINTS:
            for axis in ("lr", "weight_decay"):
                spelled = [shown(v) for v in grid_axis(getattr(a, axis), s.points)]  # as every output shows them
                twins = sorted({v for v in spelled if spelled.count(v) > 1})
                _check(not twins, file, f"{w}.{axis}",
                       f"grid points that coincide at the 4 significant digits runs and params show ({', '.join(twins)}) "
                       f"would give two members one name and one filter; widen the range or use fewer points, "
                       f"but got low={getattr(a, axis).low!r}, high={getattr(a, axis).high!r}, points={getattr(a, axis).points or s.points}")
        _check_options(a, file, w)
    for i, mem in enumerate(spec.members):
        w = f"members[{i}]"
        _check(mem.optimizer in OPTIMIZERS, file, f"{w}.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, but got optimizer={excerpt(mem.optimizer)}")
        _check(mem.decay in DECAY_MODES, file, f"{w}.decay", f"must be one of {', '.join(DECAY_MODES)}, but got decay={excerpt(mem.decay)}")
        _check(mem.lr > 0, file, f"{w}.lr", f"must be > 0, but got lr={mem.lr}")
        _check(mem.weight_decay >= 0, file, f"{w}.weight_decay", f"must be >= 0, but got weight_decay={mem.weight_decay}")
        _check_float32(mem.lr, file, f"{w}.lr")
        if mem.weight_decay:
            _check_float32(mem.weight_decay, file, f"{w}.weight_decay")
        _check(0 <= mem.seed < 2**32, file, f"{w}.seed", f"must lie in [0, 2**32), but got seed={mem.seed}")
        _check_options(mem, file, w)
    # distinct as a person reads them (run names and params show 4 significant digits, -0.0 as 0), also from
    # the grid's points: a twin would be trained twice, or two members would share one name and one filter
    seen = [(m.arm, shown(m.lr), shown(m.weight_decay), m.seed) for m in spec.members]
    dup = next((k for k in seen if seen.count(k) > 1), None)
    _check(dup is None, file, "members", f"every member must be distinct at the 4 significant digits runs and "
           f"params show, but {dup[0]} lr={dup[1]} weight_decay={dup[2]} seed={dup[3]} appears twice" if dup else "")
    if spec.search.sampler == "grid":
        for i, (arm, lr, wd, seed) in enumerate(seen):
            for a in spec.arms:
                if (a.name == arm and seed in spec.search.seeds
                        and lr in {shown(v) for v in grid_axis(a.lr, spec.search.points)}
                        and wd in {shown(v) for v in grid_axis(a.weight_decay, spec.search.points)}):
                    _check(False, file, f"members[{i}]", f"is a point of arm {arm}'s grid (lr={lr}, weight_decay={wd}, "
                           f"seed {seed}): it would be trained twice; remove the member")
    return spec


def shown(v: float) -> str:
    """A learning rate or weight decay as every output spells it (run names, params, the terminal, the report,
    the figures' ticks): 4 significant digits, zero without a sign (0.05477, 0.001778, 1e-05). Typed back into
    a filter (`params.lr = '0.05477'`) it finds the member; the exact value is kept beside it (`lr_exact`)."""
    return f"{v + 0.0:.4g}"


def shown_metric(v: float) -> str:
    """A final metric (a loss, an error) as every output spells it: 4 decimals (0.0849), 4 significant digits
    where that would be long (a loss of 3.121e+14 from a run that blew up without turning non-finite); n/a."""
    import math

    if not isinstance(v, (int, float)) or math.isnan(v):
        return "n/a"
    return f"{v:.4f}" if abs(v) < 1e4 else f"{v:.4g}"


def _check_limits(spec: StudySpec, file) -> None:
    """Numbers past HARD_LIMITS (and seed lists past MAX_SEEDS) cannot run on any machine: refused, whatever
    the flags."""
    for where, limit in HARD_LIMITS.items():
        section, name = where.split(".")
        v = getattr(getattr(spec, section), name)
        _check(v is None or v <= limit, file, where, f"must be <= {limit:,} (no machine runs more), but got {name}={excerpt(v)}")
    n = len(spec.search.seeds)
    _check(n <= MAX_SEEDS, file, "search.seeds", f"at most {MAX_SEEDS:,} seeds, but got {n:,} seeds")


def _check_as_written(spec: StudySpec, file) -> None:
    """Checks of what a person writes (load_spec), not of specs a study recorded, which an older version may have
    recorded otherwise and `study resume` must still read (see also _check_written)."""
    t = spec.train
    _check(t.schedule != "step" or len(t.milestones) > 0, file, "train.milestones", "schedule step needs at least one "
           "milestone (otherwise train.gamma never acts: use schedule constant), but got milestones=[]")
    _check(t.schedule != "step" or t.gamma != 1, file, "train.gamma", "schedule step with gamma 1 never changes the "
           "learning rate at its milestones: use schedule constant, or a gamma below 1, but got gamma=1")


def not_applicable(spec: StudySpec) -> dict[str, str]:
    """The fields ("section.name") this spec's dataset, schedule or sampler does not use, each with why: refused
    where a person wrote them (_check_written), left out of the spec a study records for people (spec.yaml)."""
    t, s = spec.train, spec.search
    out = {}
    if t.schedule != "step":
        out.update({f"train.{n}": f"applies to schedule step only, not {t.schedule}" for n in ("milestones", "gamma")})
    if spec.data.dataset != "synthetic":
        out.update({f"data.{n}": f"sizes only dataset synthetic, not {spec.data.dataset}"
                    for n in ("synthetic_train", "synthetic_test")})
    if spec.members and not spec.arms:
        out.update({f"search.{n}": "draws or repeats the settings of arms, and this spec has members only (each with "
                    "its own setting and seed)" for n in ("sampler", "points", "trials", "seeds", "refine")})
    elif s.sampler != "grid":
        out["search.points"] = f"sets grid points; sampler {s.sampler} draws search.trials settings instead"
    else:
        out["search.trials"] = "sets how many settings a sampler draws; sampler grid takes search.points instead"
        if spec.arms and all(getattr(a, axis).points is not None for a in spec.arms for axis in ("lr", "weight_decay")):
            out["search.points"] = "is the grid points of an axis without its own, and every arm's lr and " \
                                   "weight_decay set points"
    return out


def _check_written(raw: dict, spec: StudySpec, file) -> None:
    """A field written in the file (or by --set) that this spec's dataset, schedule or sampler does not use is
    refused even where its value is the default (_check_applies sees values only, and cannot tell)."""
    for where, why in not_applicable(spec).items():
        section, name = where.split(".")
        if isinstance(raw.get(section), dict) and name in raw[section]:
            _fail(file, where, f"{why}; remove it")
    if spec.search.sampler == "grid":  # one point is `low`: a `high` that differs would be dropped unsaid
        for i, a in enumerate(spec.arms):
            for axis in ("lr", "weight_decay"):
                r = getattr(a, axis)
                _check((r.points or spec.search.points) != 1 or r.low == r.high, file, f"arms[{i}].{axis}",
                       f"one grid point trains low only and drops high; give high equal to low, or 2 or more "
                       f"points, but got low={r.low!r}, high={r.high!r}, points=1")


def _check_path_given(spec: StudySpec, file) -> None:
    d = spec.data
    _check(d.path is None or d.path.strip() != "", file, "data.path", f"an empty path; name the folder, or leave "
           f"data.path out for dataset {d.dataset}'s default, but got path={d.path!r}")


def _check_applies(spec: StudySpec, file) -> None:
    """A field the chosen dataset, schedule or sampler does not use (not_applicable) is refused where it differs
    from its default, never ignored: a user who wrote it expects it to take effect. (Where it was written at its
    default, _check_written refuses it for a file; a recorded spec is read as it was recorded.)"""
    d, s = spec.data, spec.search
    entry = DATASETS.get(d.dataset)
    _check_path_given(spec, file)
    if entry is not None and not entry.takes_path:
        _check(d.path is None, file, "data.path", f"dataset {d.dataset} reads no folder ({entry.source}); remove "
               f"data.path or choose a dataset that reads one, but got path={excerpt(d.path)}")
    defaults = {"data": DataSpec(), "train": TrainSpec(), "search": SearchSpec()}
    for where, why in not_applicable(spec).items():
        if where == "search.points" and s.sampler == "grid" and not (spec.members and not spec.arms):
            continue  # beside every axis's own points: an older --smoke recorded it; refused as written only
        section, name = where.split(".")
        v = getattr(getattr(spec, section), name)
        _check(v == getattr(defaults[section], name), file, where,
               f"{why}; remove it, but got {name}={excerpt(list(v) if isinstance(v, tuple) else v)}")
    if s.sampler != "grid":
        for i, a in enumerate(spec.arms):
            for axis in ("lr", "weight_decay"):
                pts = getattr(a, axis).points
                _check(pts is None, file, f"arms[{i}].{axis}.points", f"sets grid points; sampler {s.sampler} draws "
                       f"search.trials settings instead, but got points={pts}")


def study_cost(spec: StudySpec, train_size: int) -> dict:
    """What a study asks of the machines: members, member-epochs and member-images (training images seen)."""
    members = planned_members(spec)
    epochs = members * spec.train.epochs
    images = epochs * steps_per_epoch(spec.train.batch_size, train_size) * min(spec.train.batch_size, train_size)
    return {"members": members, "member_epochs": epochs, "member_images": images}


def check_cost(spec: StudySpec, train_size: int, allow_large: bool) -> dict:
    """Refuse a study past LARGE_MEMBERS or LARGE_MEMBER_EPOCHS unless allow_large (--allow-large)."""
    c = study_cost(spec, train_size)
    if not allow_large:
        if c["members"] > LARGE_MEMBERS:
            raise SpecError(f"invalid search: the study trains {c['members']:,} members, more than {LARGE_MEMBERS:,}; "
                            f"if that is meant, add --allow-large, but got seeds={len(spec.search.seeds)}, "
                            f"points={spec.search.points}")
        if c["member_epochs"] > LARGE_MEMBER_EPOCHS:
            raise SpecError(f"invalid train.epochs: {c['members']:,} members × {spec.train.epochs:,} epochs = "
                            f"{c['member_epochs']:,} member-epochs, more than {LARGE_MEMBER_EPOCHS:,}; if that is meant, "
                            f"add --allow-large, but got epochs={spec.train.epochs}")
    return c


def _check_options(a, file, w: str) -> None:
    """An arm (or member) may set only its own optimizer's settings, each within the range its options dataclass
    states (study/registry.py), and a float setting within float32's range (training runs in it)."""
    if a.optimizer not in OPTIMIZERS:
        return
    entry, given = OPTIMIZERS[a.optimizer], dict(a.options)
    own = entry.option_names()
    for name, value in a.options:  # a spec built in code (not parsed) may hold another optimizer's setting
        _check(name in own, file, f"{w}.{name}", f"optimizer {a.optimizer} takes no {name} (its settings: "
               f"{', '.join(own) or 'none'}), but got {name}={excerpt(value)}")
    for name, why in entry.problems(given):
        _fail(file, f"{w}.{name}", why)
    if isinstance(given.get("eps"), float):  # added to √v̂ in float32: a value float32 flushes to 0 is refused
        _check_float32(given["eps"], file, f"{w}.eps")


def grid_size(arm: ArmSpec, search: SearchSpec) -> int:
    """Grid points per seed of one arm."""
    return (arm.lr.points or search.points) * (arm.weight_decay.points or search.points)


def arm_settings(arm: ArmSpec, search: SearchSpec) -> int:
    """Settings (lr, weight_decay) an arm trains per seed: its grid, or the sampler's trials."""
    return grid_size(arm, search) if search.sampler == "grid" else int(search.trials or 0)


def planned_members(spec: StudySpec) -> int:
    """Members a study trains: explicit members, plus settings × seeds of every arm."""
    return len(spec.members) + sum(arm_settings(a, spec.search) for a in spec.arms) * len(spec.search.seeds)


def steps_per_epoch(batch_size: int, train_size: int) -> int:
    """Optimizer steps per epoch: full batches only (drop_last), so every step sees `batch_size` images."""
    return max(1, train_size // min(batch_size, train_size))


def total_steps(spec: StudySpec, train_size: int) -> int:
    return spec.train.epochs * steps_per_epoch(spec.train.batch_size, train_size)


def decay_timescale(decay: str, lr: float, weight_decay: float, optimizer: str | None = None) -> float:
    """τ in steps (docs/science.md): 1/(η·λ) for coupled and decoupled decay, 1/λ for independent decay; coupled
    L2 under an optimizer that divides it by √v̂ (Adam) √v̂/(η·λ), with the registry's typical √v̂."""
    rate = weight_decay if decay == "independent" else lr * weight_decay
    if decay == "coupled" and optimizer in OPTIMIZERS and OPTIMIZERS[optimizer].coupled_sqrt_v:
        rate /= OPTIMIZERS[optimizer].coupled_sqrt_v
    return 1.0 / rate if rate > 0 else math.inf


def has_timescale(optimizer: str, decay: str) -> bool:
    """Whether docs/science.md states a decay timescale for the arm: every decoupled and independent arm, coupled
    SGD, and coupled Adam through a typical √v̂; not coupled Adagrad (√Σg² grows all run) or Lion (a sign)."""
    entry = OPTIMIZERS.get(optimizer)
    return decay != "coupled" or (entry is not None and (entry.coupled_timescale or bool(entry.coupled_sqrt_v)))


# --------------------------------------------------------------------------- reading files

class _NoAliasLoader(yaml.SafeLoader):
    """yaml.safe_load without anchors and aliases, without repeated keys, and with YAML 1.2's plain scalars.

    Aliases: a spec needs none, and expanding them lets a file of a few hundred bytes become gigabytes
    ("billion laughs"). Repeated keys: YAML loaders keep the last value silently, so a line added to shorten
    a run would be ignored. Scalars: YAML 1.1 (PyYAML's default) reads `1:30` as 90, `010` as 8, `0x1` as 1,
    `1_000` as 1000 and `on`/`no` as booleans; here only YAML 1.2's core forms are numbers and booleans
    (decimal integers, decimal and exponent floats, .inf/.nan, true/false, null), so those others stay
    strings, and validation names the field that received one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in a spec, at line {event.start_mark.line + 1}")
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.YAMLError(f"key {excerpt(key, 60)} is repeated at line {line} (first at line "
                                         f"{seen[key]}): a key may appear once in a mapping")
                seen[key] = line
            except TypeError:
                continue  # an unhashable key: the mapping's own construction says so
        return super().construct_mapping(node, deep)


# YAML 1.1's other implicit types are not YAML 1.2's core schema: a date (2026-12-07), `=` (the value key) and
# `<<` (the merge key) stay strings, as YAML 1.2 reads them (and `<<` is then an unknown key like any other)
_NoAliasLoader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                                                  "tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp",
                                                  "tag:yaml.org,2002:value", "tag:yaml.org,2002:merge")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_YAML12 = {"tag:yaml.org,2002:bool": re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
           "tag:yaml.org,2002:int": re.compile(r"^[-+]?[0-9]+$", re.ASCII),
           "tag:yaml.org,2002:float": re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                                                 r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", re.ASCII)}
for _tag, _first in (("tag:yaml.org,2002:bool", "tTfF"), ("tag:yaml.org,2002:int", "-+0123456789"),
                     ("tag:yaml.org,2002:float", "-+.0123456789")):
    _NoAliasLoader.add_implicit_resolver(_tag, _YAML12[_tag], list(_first))


def _yaml12_text(loader, node, tag: str) -> str:
    """A scalar's text, in YAML 1.2's core form for `tag` (an explicit `!!int 1_0` or `!!int ３` too)."""
    text = loader.construct_scalar(node)
    if not _YAML12[tag].match(text):
        kind = tag.rsplit(":", 1)[-1]
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a YAML 1.2 {kind}", node.start_mark)
    return text


def _construct_yaml12_int(loader, node):
    return int(_yaml12_text(loader, node, "tag:yaml.org,2002:int"), 10)   # "010" is ten, as YAML 1.2 reads it


def _construct_yaml12_float(loader, node):
    text = _yaml12_text(loader, node, "tag:yaml.org,2002:float")
    return float(text.replace(".inf", "inf").replace(".Inf", "inf").replace(".INF", "inf")
                 .replace(".nan", "nan").replace(".NaN", "nan").replace(".NAN", "nan"))


def _construct_yaml12_bool(loader, node):
    return _yaml12_text(loader, node, "tag:yaml.org,2002:bool").lower() == "true"


_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _construct_yaml12_int)
_NoAliasLoader.add_constructor("tag:yaml.org,2002:float", _construct_yaml12_float)
_NoAliasLoader.add_constructor("tag:yaml.org,2002:bool", _construct_yaml12_bool)


def load_yaml(text: str):
    """A spec's YAML text (a file or a --set value) as Python values; raises yaml.YAMLError with one line for
    every way it can be unreadable, nesting too deep and numbers too long included."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply for a spec") from None
    except ValueError as e:   # e.g. Python's limit on the digits of an integer
        raise yaml.YAMLError(f"a value cannot be read: {excerpt(str(e), 100)[1:-1]}") from None


def yaml_message(e: Exception) -> str:
    """One line for a YAML error: what is wrong, where (line and column, 1-based) and in which construct."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(e, "context", None)
    return excerpt(f"{problem}{where}" + (f" ({context})" if context else ""), 200)[1:-1]


def read_spec_file(p: Path) -> dict:
    """The YAML mapping of a spec file; every way a file can be unreadable is one SpecError line."""
    if p.is_dir():
        raise SpecError(f"invalid spec: {excerpt(str(p), 200)} is a folder, not a spec file")
    if p.exists() and not p.is_file():  # a FIFO, socket or device: reading it could block or never end
        raise SpecError(f"invalid spec: {excerpt(str(p), 200)} is not a regular file (a pipe, socket or device); "
                        f"write the spec to a file")
    if not p.is_file():
        raise SpecError(f"invalid spec: file {excerpt(str(p), 200)} does not exist")
    size = p.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise SpecError(f"{p.name}: invalid spec: {size} bytes is larger than a spec can be ({MAX_SPEC_BYTES} bytes)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(f"{p.name}: invalid spec: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r})") from None
    except OSError as e:
        raise SpecError(f"invalid spec: cannot read {p} ({e.strerror})") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as e:
        raise SpecError(f"{p.name}: invalid YAML: {yaml_message(e)}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p.name}: invalid spec: expected a mapping at the top level, but got {type(raw).__name__}")
    return raw


_SET_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[[0-9]+\])*)$")


def _dataclass_of(tp):
    """The dataclass inside an annotation (`X`, `X | None`), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for a in typing.get_args(tp):
        if dataclasses.is_dataclass(a):
            return a
    return None


def apply_overrides(raw: dict, sets, file=None) -> dict:
    """`--set KEY=VALUE` overrides on a spec's raw mapping, before it is parsed and validated: KEY is dotted
    (`train.epochs`, `search.seeds`, `arms[0].lr.high`), VALUE a YAML scalar or flow collection (`3`,
    `1e-3`, `[0, 1]`, `{low: 0.01, high: 0.1}`, `null`). An unknown key is one line naming it; a bad value
    gets the same line the file would (the spec is validated after). Returns `raw`, changed in place."""
    seen: dict[str, str] = {}
    for item in sets or ():
        key, eq, text = str(item).partition("=")
        key = key.strip()
        if not eq or not key:
            raise SpecError(f"invalid --set: expected KEY=VALUE (e.g. train.epochs=3), but got {excerpt(item)}")
        if not text.strip():  # as the file's `key:` with nothing after it would: say which, never guess
            raise SpecError(f"invalid --set {key}: an empty value; write {key}=null for none, but got {excerpt(item)}")
        canonical = re.sub(r"\s+", "", key)
        if canonical in seen:  # the last one would win silently, as a repeated key in a file would
            raise SpecError(f"invalid --set {key}: given twice ({excerpt(seen[canonical])}, then {excerpt(text)}); "
                            f"give it once")
        seen[canonical] = text
        try:
            value = load_yaml(text)
        except yaml.YAMLError as e:
            raise SpecError(f"invalid --set {key}: not a YAML value ({yaml_message(e)}), "
                            f"but got {excerpt(text)}") from None
        cls, node, where, parts = StudySpec, raw, "", key.split(".")
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            m = _SET_SEGMENT.match(part)
            fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else set()
            if "options" in fields:  # an arm's optimizer settings are keys of the arm (arms[0].momentum=0.5)
                fields = (fields - {"options"}) | set(OPTIMIZER_SETTINGS)
            if m is None or m.group(1) not in fields:
                loc = f"{where}.{part}" if where else part
                allowed = f"allowed keys{' in ' + where if where else ''}: {', '.join(sorted(fields))}" if fields \
                    else f"{where} has no fields"
                loc = loc if len(loc) <= 60 else f"{loc[:48]}… ({len(loc)} chars)"
                raise SpecError(f"invalid --set: unknown key {loc!r}; {allowed}")
            name, indices = m.group(1), [int(i) for i in re.findall(r"\[([0-9]+)\]", m.group(2))]
            where = f"{where}.{name}" if where else name
            tp = typing.get_type_hints(cls).get(name)  # None for an optimizer's setting: checked when the arm is built
            holder, slot = node, name  # the container and the key or index the segment names
            for i in indices:  # arms[0].lr.high: an element of a list the file holds
                seq = holder.get(slot) if isinstance(holder, dict) else holder[slot]
                if not isinstance(seq, list) or i >= len(seq):
                    size = len(seq) if isinstance(seq, list) else 0
                    raise SpecError(f"invalid --set {key}: {where} has {size} entr{'y' if size == 1 else 'ies'}, "
                                    f"so there is no {where}[{i}]")
                holder, slot, where = seq, i, f"{where}[{i}]"
                tp = next((a for a in typing.get_args(tp) if a is not Ellipsis and a is not type(None)), tp)
            if last:
                holder[slot] = value
                break
            if isinstance(holder, dict) and holder.get(slot) is None:
                holder[slot] = {}  # train.epochs=3 on a file without a train section
            node = holder[slot]
            if not isinstance(node, dict):
                _fail(file, where, f"expected a mapping, but got {where.split('.')[-1]}={excerpt(node)}")
            cls = _dataclass_of(tp)
    return raw


def load_spec(path, data_path: str | None = None, overrides=None) -> StudySpec:
    """Read, strictly parse and validate a spec file. A relative data.path is relative to the spec's folder
    (Ray runs trials in other working directories); `data_path` (the --data-path flag) replaces it.
    `overrides` (the --set flags, ["train.epochs=3", …]) change the file's mapping before it is parsed, so
    they are checked like the file and are part of the resolved spec. The spec returned is resolved: what
    it says is what runs, and what a study records."""
    p = Path(path)
    raw = apply_overrides(read_spec_file(p), overrides, p.name)
    raw.setdefault("name", p.stem)
    spec = _build(StudySpec, raw, p.name, "")
    check_data_path_flag(spec.data.dataset, data_path, f" of {p.name}")
    _check_path_given(spec, p.name)  # before '' is resolved to the spec's own folder
    _check_as_written(spec, p.name)
    new_path = data_path if data_path is not None else spec.data.path
    if new_path is not None:
        expanded = os.path.expandvars(new_path)
        if not expanded.strip():  # '$UNSET_VAR' would name the current folder
            _fail(p.name, "data.path" if data_path is None else "--data-path",
                  f"empty once environment variables are expanded, but got path={excerpt(new_path)}")
        q = Path(expanded).expanduser()
        base = Path.cwd() if data_path is not None else p.resolve().parent
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, path=str((base / q).resolve())))
    spec = validate(spec, p.name)
    _check_written(raw, spec, p.name)   # after validate: a field's own error (an unknown sampler) comes first
    return spec


def check_data_path_flag(dataset: str, data_path: str | None, where: str = "") -> None:
    """--data-path given for a dataset that reads no folder (digits, synthetic): refused, never ignored."""
    entry = DATASETS.get(dataset)
    if data_path is not None and entry is not None and not entry.takes_path:
        raise SpecError(f"invalid --data-path: dataset {dataset}{where} reads no folder ({entry.source}), "
                        f"but got data-path={excerpt(data_path)}")


def spec_from_dict(raw: dict) -> StudySpec:
    """A spec from its recorded form (StudySpec.to_dict); validated like a file."""
    return validate(_build(StudySpec, raw, None, ""))


SMOKE_MODEL_DEPTH = 20  # a smoke run keeps the model's family but at most ResNet-20 depth and width 1


def shrink_for_smoke(spec: StudySpec) -> StudySpec:
    """A few members, one epoch, a small model and a few hundred images: the same code path, a minute on a CPU."""
    d = spec.data
    if d.dataset not in ("digits", "synthetic"):
        d = dataclasses.replace(d, train_subset=min(d.train_subset or 10**9, 256),
                                test_subset=min(d.test_subset or 10**9, 256))
    model = spec.model
    depth = model_depth(model.name)
    if depth is not None and depth > SMOKE_MODEL_DEPTH:
        model = dataclasses.replace(model, name=f"resnet{SMOKE_MODEL_DEPTH}")
    model = dataclasses.replace(model, width=1)
    def two(r: Range) -> Range:   # grids: at most two points per axis, a single-point axis stays one point
        if spec.search.sampler != "grid":
            return r              # samplers draw search.trials settings; axes have no points
        return dataclasses.replace(r, points=1 if (r.points or spec.search.points) == 1 else 2)

    arms = tuple(dataclasses.replace(a, lr=two(a.lr), weight_decay=two(a.weight_decay)) for a in spec.arms)
    trials = None if spec.search.sampler == "grid" else min(spec.search.trials or 2, 2)
    # every grid axis now names its points (two()): search.points is left at its default, where it means nothing
    grid = spec.search.sampler == "grid"
    search = dataclasses.replace(spec.search, points=SearchSpec().points if grid else spec.search.points,
                                 trials=trials, seeds=spec.search.seeds[:1])
    train = dataclasses.replace(spec.train, epochs=1, warmup_epochs=0.0, batch_size=min(spec.train.batch_size, 64))
    execution = dataclasses.replace(spec.execution, members_per_trial=min(spec.execution.members_per_trial, 4),
                                    cpus_per_trial=1.0)
    name = f"{spec.name}-smoke"
    if not NAME_RE.match(name):
        raise SpecError(f"invalid name: --smoke names the study {excerpt(name, 40)} ({len(name)} characters), longer "
                        f"than a name can be (100); shorten name, but got name={excerpt(spec.name, 40)}")
    # its own experiment and no refine round: a smoke run never writes beside the real study's records, and a
    # one-epoch landscape says nothing about where the grid should grow
    tracking = dataclasses.replace(spec.tracking, experiment=f"{spec.experiment}-smoke")
    search = dataclasses.replace(search, refine=0)
    return validate(dataclasses.replace(spec, name=name, data=d, model=model, arms=arms, search=search, train=train,
                                        execution=execution, members=spec.members[:4], tracking=tracking))


def grid_axis(r: Range, default_points: int) -> list[float]:
    """Log-spaced grid points from low to high inclusive."""
    n = r.points or default_points
    if n == 1:
        return [r.low]
    inner = [float(math.exp(math.log(r.low) + i * (math.log(r.high) - math.log(r.low)) / (n - 1))) for i in range(1, n - 1)]
    return [r.low, *inner, r.high]  # exact endpoints: Optuna checks grid values against [low, high]


def arm_member(arm: ArmSpec, lr: float, weight_decay: float, seed: int) -> MemberSpec:
    return MemberSpec(arm.optimizer, arm.decay, float(lr), float(weight_decay), int(seed), arm.options)


def grid_members(spec: StudySpec) -> list[MemberSpec]:
    """The explicit members, then every grid point of every arm for every seed (grid studies only)."""
    out = list(spec.members)
    if spec.arms and spec.search.sampler != "grid":
        raise SpecError(f"invalid search.sampler: only grid studies can be listed without Optuna "
                        f"(use `study run`), but got sampler={spec.search.sampler!r}")
    for arm in spec.arms:
        for seed in spec.search.seeds:
            for lr in grid_axis(arm.lr, spec.search.points):
                for wd in grid_axis(arm.weight_decay, spec.search.points):
                    out.append(arm_member(arm, lr, wd, seed))
    return out


def final_metrics(history: list[dict]) -> dict:
    """A member's final metrics from its per-epoch rows: the last epoch's; for a diverged member, its last
    finite epoch's, flagged diverged, with the epoch it diverged at."""
    if not history:
        return {}
    last = dict(history[-1])
    if last["diverged"]:
        finite = [r for r in history if not r["diverged"]]
        last = dict(finite[-1]) if finite else {k: (math.nan if k not in ("epoch", "diverged") else v)
                                                for k, v in history[0].items()}
        last["diverged"] = 1.0
        last["diverged_epoch"] = next(r["epoch"] for r in history if r["diverged"])
    return last


FLOAT32_RANGE = (1.1754944e-38, 3.4028235e38)  # float32's (and bfloat16's) normal numbers, where training runs


def _check_float32(v: float, file, where: str) -> None:
    """A learning rate or decay the training arithmetic can hold: outside float32's normal range it would
    become 0, a subnormal or inf on the device, not the number the spec says."""
    lo, hi = FLOAT32_RANGE
    _check(lo <= v <= hi, file, where, f"must lie in float32's range [{lo:.4g}, {hi:.4g}] where training runs, "
                                       f"but got {where.rsplit('.', 1)[-1]}={v!r}")


def warmup_steps(train: TrainSpec, per_epoch: int) -> int:
    """The linear warm-up in steps: train.warmup_epochs of `per_epoch` steps, rounded (what the trainer runs)."""
    return round(train.warmup_epochs * per_epoch)


def data_warnings(spec: StudySpec, train_size: int) -> list[str]:
    """What the data makes of the spec's settings that the spec alone cannot show."""
    t, out = spec.train, []
    if t.batch_size > train_size:
        out.append(f"train.batch_size {t.batch_size} is larger than the {train_size:,} training images: every step "
                   f"takes all {train_size:,} (one step per epoch)")
    per_epoch, T = steps_per_epoch(t.batch_size, train_size), total_steps(spec, train_size)
    warm = warmup_steps(t, per_epoch)
    if t.warmup_epochs > 0 and warm < 2:
        out.append(f"train.warmup_epochs {t.warmup_epochs:g} is {t.warmup_epochs * per_epoch:.3g} of this run's "
                   f"{per_epoch} steps per epoch, rounded to {warm}: no step is warmed up")
    if t.schedule == "step":
        by_step: dict[int, list[float]] = {}  # the first step with step >= q·T (engine.schedule_multiplier)
        for q in t.milestones:
            by_step.setdefault(math.ceil(q * T), []).append(q)
        for step, qs in by_step.items():
            if step >= T:
                out += [f"train.milestones {q:g} falls at step {step} of a run of {T} steps: its drop never happens"
                        for q in qs]
            elif len(qs) > 1:
                out.append(f"train.milestones {', '.join(f'{q:g}' for q in qs)} fall on the same step {step} of {T}: "
                           f"their drops happen at once")
    return out


def timescale_warnings(spec: StudySpec, train_size: int) -> list[str]:
    """docs/science.md: decay forgets over τ = 1/(lr·λ) steps (coupled, decoupled) or 1/λ (independent). A grid
    whose τ never comes within 10× of the run's length cannot show any λ dependence."""
    T = total_steps(spec, train_size)
    out = []
    for a in spec.arms:
        if not has_timescale(a.optimizer, a.decay):
            continue  # coupled decay through a normalization with no stated timescale (√Σg², a sign)
        corners = [decay_timescale(a.decay, lr, wd, a.optimizer) for lr in (a.lr.low, a.lr.high)
                   for wd in (a.weight_decay.low, a.weight_decay.high)]
        lo, hi = min(corners), max(corners)
        if lo > 10 * T:
            out.append(f"arm {a.name}: decay timescale τ spans {lo:.3g}..{hi:.3g} steps, always > 10× the run's "
                       f"{T} steps: decay does nothing and the landscape will be flat in weight_decay; raise weight_decay")
        elif hi < T / 10:
            out.append(f"arm {a.name}: decay timescale τ spans {lo:.3g}..{hi:.3g} steps, always < 1/10 of the run's "
                       f"{T} steps: weights collapse everywhere; lower weight_decay")
    return out
