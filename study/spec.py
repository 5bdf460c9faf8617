"""Study specs: frozen dataclasses loaded from YAML with yaml.safe_load and a strict loader.

Owns the spec's shape, its validation (one-line errors naming the field and the value) and the
expansion of arms × search × seeds into members. Imports no Ray, Optuna or MLflow.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .optim import DECAY_MODES, OPTIMIZERS

SCHEDULES = ("cosine", "constant", "step")
SAMPLERS = ("grid", "random", "qmc", "tpe", "gp")
LANDSCAPE_METRICS = ("test_error", "test_loss", "train_loss")
MAX_GRID_POINTS = 10_000  # per arm and seed: a grid larger than this is almost surely a typo


class SpecError(ValueError):
    """A spec or flag is invalid. str(e) is one line naming the field and the value."""


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "digits"         # digits | cifar10 | cifar100 | parquet | synthetic
    path: str | None = None         # parquet: folder with train/test.parquet; cifar: download root
    train_subset: int | None = None  # keep the first n training images of a fixed shuffle
    test_subset: int | None = None   # keep the first n test images of a fixed shuffle
    crop_padding: int | None = None  # pixels; default 4 for 32×32 images, 0 for digits
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
    eval_batch_size: int = 1024
    compile: bool = False           # torch.compile the array step (CUDA)


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    points: int | None = None  # grid points on this axis; default search.points


@dataclass(frozen=True)
class ArmSpec:
    optimizer: str                  # sgd | adam | adagrad
    decay: str                      # coupled | decoupled | independent
    lr: Range
    weight_decay: Range
    momentum: float = 0.9           # sgd
    nesterov: bool = False          # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam
    eps: float | None = None        # adam 1e-8, adagrad 1e-10 when unset

    @property
    def name(self) -> str:
        return f"{self.optimizer}-{self.decay}"


@dataclass(frozen=True)
class SearchSpec:
    sampler: str = "grid"           # grid | random | qmc | tpe | gp
    points: int = 8                 # grid points per axis (log spaced)
    trials: int | None = None       # settings per arm for non-grid samplers
    seeds: tuple[int, ...] = (0,)   # repeats of every setting
    metric: str = "test_error"      # final metric Optuna minimizes and `study export` maps by default


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


@dataclass(frozen=True)
class MemberSpec:
    optimizer: str
    decay: str
    lr: float
    weight_decay: float
    seed: int = 0
    momentum: float = 0.9
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float | None = None

    @property
    def arm(self) -> str:
        return f"{self.optimizer}-{self.decay}"

    def array_key(self) -> tuple:
        """Members with equal keys may share an array: same optimizer, decay and optimizer settings.
        Seeds may differ: a member's seed fixes its initial weights; the array's batches follow train.seed."""
        return (self.optimizer, self.decay, self.momentum, self.nesterov, self.betas, self.eps)

    def key(self, study: str) -> str:
        """The member's stable identity: resume and retries use it so a member is recorded once."""
        return f"{study}|{self.arm}|lr={self.lr!r}|weight_decay={self.weight_decay!r}|seed={self.seed}"

    def optimizer_kwargs(self) -> dict:
        if self.optimizer == "sgd":
            return {"momentum": self.momentum, "nesterov": self.nesterov}
        if self.optimizer == "adam":
            return {"betas": self.betas, "eps": 1e-8 if self.eps is None else self.eps}
        return {"eps": 1e-10 if self.eps is None else self.eps}


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
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- strict loading

def _fail(file, where: str, msg: str):
    raise SpecError(f"{file}: invalid {where}: {msg}" if file else f"invalid {where}: {msg}")


def _coerce(value, tp, file, where):
    """Check `value` against the annotation `tp`; build nested dataclasses. Ints are accepted as floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], file, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, file, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            _fail(file, where, f"expected a list, but got {where.split('.')[-1]}={value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], file, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            _fail(file, where, f"expected {len(args)} values, but got {where.split('.')[-1]}={value!r}")
        return tuple(_coerce(v, a, file, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    key = where.split(".")[-1]
    if tp is bool:
        if not isinstance(value, bool):
            _fail(file, where, f"expected true or false, but got {key}={value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(file, where, f"expected an integer, but got {key}={value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string; accept what float() accepts
            try:
                value = float(value)
            except ValueError:
                _fail(file, where, f"expected a number, but got {key}={value!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            _fail(file, where, f"expected a number, but got {key}={value!r}")
        if not math.isfinite(value):
            _fail(file, where, f"must be finite, but got {key}={value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            _fail(file, where, f"expected a string, but got {key}={value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp}")  # a bug in this module, not in the spec


def _build(cls, raw, file, where):
    if not isinstance(raw, dict):
        _fail(file, where, f"expected a mapping of {cls.__name__} fields, but got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            loc = f"{where}.{key}" if where else str(key)
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

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def _check(cond: bool, file, where: str, msg: str):
    if not cond:
        _fail(file, where, msg)


def validate(spec: StudySpec, file=None) -> StudySpec:
    """Raise SpecError for the first invalid value; return the spec unchanged otherwise."""
    _check(bool(NAME_RE.match(spec.name)) and ".." not in spec.name, file, "name",
           f"a study name uses letters, digits, '_', '.', '-' (no path separators), but got name={spec.name!r}")
    d, m, t, s, x = spec.data, spec.model, spec.train, spec.search, spec.execution
    from .data import DATASETS
    from .models import MODEL_NAMES, model_depth
    _check(d.dataset in DATASETS, file, "data.dataset", f"must be one of {', '.join(DATASETS)}, but got dataset={d.dataset!r}")
    if d.dataset == "parquet":
        _check(d.path is not None, file, "data.path", "dataset parquet needs a folder holding train.parquet and test.parquet, but got path=None")
        for split in ("train", "test"):
            f = Path(d.path).expanduser() / f"{split}.parquet"
            _check(f.is_file(), file, "data.path", f"{f} does not exist (path={d.path!r})")
    if d.dataset in ("cifar10", "cifar100") and d.path is not None:
        _check(Path(d.path).is_dir(), file, "data.path", f"folder {d.path} does not exist (path={d.path!r})")
    _check(d.train_subset is None or d.train_subset >= 1, file, "data.train_subset", f"must be >= 1, but got train_subset={d.train_subset}")
    _check(d.test_subset is None or d.test_subset >= 1, file, "data.test_subset", f"must be >= 1, but got test_subset={d.test_subset}")
    _check(d.crop_padding is None or 0 <= d.crop_padding <= 16, file, "data.crop_padding", f"must lie in [0, 16], but got crop_padding={d.crop_padding}")
    _check(d.synthetic_train >= 1 and d.synthetic_test >= 1, file, "data.synthetic_train", f"sizes must be >= 1, but got {d.synthetic_train}, {d.synthetic_test}")
    _check(m.name == "preact_resnet18" or model_depth(m.name) is not None, file, "model.name",
           f"must be one of {', '.join(MODEL_NAMES)} (any resnet of depth 6n+2), but got name={m.name!r}")
    _check(1 <= m.width <= 16, file, "model.width", f"must lie in [1, 16], but got width={m.width}")
    _check(t.epochs >= 1, file, "train.epochs", f"must be >= 1, but got epochs={t.epochs}")
    _check(t.batch_size >= 1, file, "train.batch_size", f"must be >= 1, but got batch_size={t.batch_size}")
    _check(t.eval_batch_size >= 1, file, "train.eval_batch_size", f"must be >= 1, but got eval_batch_size={t.eval_batch_size}")
    _check(t.schedule in SCHEDULES, file, "train.schedule", f"must be one of {', '.join(SCHEDULES)}, but got schedule={t.schedule!r}")
    _check(0 <= t.warmup_epochs < t.epochs, file, "train.warmup_epochs", f"must lie in [0, epochs={t.epochs}), but got warmup_epochs={t.warmup_epochs}")
    _check(all(0 < q < 1 for q in t.milestones), file, "train.milestones", f"fractions of the run must lie in (0, 1), but got milestones={list(t.milestones)}")
    _check(0 < t.gamma <= 1, file, "train.gamma", f"must lie in (0, 1], but got gamma={t.gamma}")
    _check(t.device in ("auto", "cpu", "cuda"), file, "train.device", f"must be auto, cpu or cuda, but got device={t.device!r}")
    _check(s.sampler in SAMPLERS, file, "search.sampler", f"must be one of {', '.join(SAMPLERS)}, but got sampler={s.sampler!r}")
    _check(s.metric in LANDSCAPE_METRICS, file, "search.metric", f"must be one of {', '.join(LANDSCAPE_METRICS)}, but got metric={s.metric!r}")
    _check(s.points >= 1, file, "search.points", f"must be >= 1, but got points={s.points}")
    _check(s.trials is None or s.trials >= 1, file, "search.trials", f"must be >= 1, but got trials={s.trials}")
    _check(len(s.seeds) >= 1 and len(set(s.seeds)) == len(s.seeds), file, "search.seeds", f"need at least one seed and no repeats, but got seeds={list(s.seeds)}")
    _check(s.sampler == "grid" or not spec.arms or s.trials is not None, file, "search.trials", f"sampler {s.sampler} needs trials (settings per arm), but got trials=None")
    _check(x.members_per_trial >= 1, file, "execution.members_per_trial", f"must be >= 1, but got members_per_trial={x.members_per_trial}")
    _check(x.cpus_per_trial > 0, file, "execution.cpus_per_trial", f"must be > 0, but got cpus_per_trial={x.cpus_per_trial}")
    _check(0 <= x.gpus_per_trial <= 1, file, "execution.gpus_per_trial", f"a GPU fraction must lie in [0, 1], but got gpus_per_trial={x.gpus_per_trial}")
    _check(x.max_failures >= 0, file, "execution.max_failures", f"must be >= 0, but got max_failures={x.max_failures}")
    _check(bool(spec.arms) or bool(spec.members), file, "arms", "a study needs arms (with a search) or an explicit members list, but got neither")
    seen = set()
    for i, a in enumerate(spec.arms):
        w = f"arms[{i}]"
        _check(a.optimizer in OPTIMIZERS, file, f"{w}.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, but got optimizer={a.optimizer!r}")
        _check(a.decay in DECAY_MODES, file, f"{w}.decay", f"must be one of {', '.join(DECAY_MODES)}, but got decay={a.decay!r}")
        _check(a.name not in seen, file, f"{w}", f"arm {a.name} appears twice")
        seen.add(a.name)
        for axis in ("lr", "weight_decay"):
            r = getattr(a, axis)
            _check(r.low > 0, file, f"{w}.{axis}.low", f"`low > 0` must hold for a log scale, but got low={r.low}")
            _check(r.high > 0, file, f"{w}.{axis}.high", f"`high > 0` must hold for a log scale, but got high={r.high}")
            _check(r.low <= r.high, file, f"{w}.{axis}", f"`low <= high` must hold, but got low={r.low}, high={r.high}")
            _check(r.points is None or r.points >= 1, file, f"{w}.{axis}.points", f"a grid needs >= 1 point, but got points={r.points}")
        n = grid_size(a, s)
        _check(s.sampler != "grid" or n <= MAX_GRID_POINTS, file, f"{w}", f"a grid of {n} points per seed exceeds {MAX_GRID_POINTS}")
        _check(a.momentum >= 0, file, f"{w}.momentum", f"must be >= 0, but got momentum={a.momentum}")
        _check(all(0 <= b < 1 for b in a.betas), file, f"{w}.betas", f"must lie in [0, 1), but got betas={list(a.betas)}")
    for i, mem in enumerate(spec.members):
        w = f"members[{i}]"
        _check(mem.optimizer in OPTIMIZERS, file, f"{w}.optimizer", f"must be one of {', '.join(OPTIMIZERS)}, but got optimizer={mem.optimizer!r}")
        _check(mem.decay in DECAY_MODES, file, f"{w}.decay", f"must be one of {', '.join(DECAY_MODES)}, but got decay={mem.decay!r}")
        _check(mem.lr > 0, file, f"{w}.lr", f"must be > 0, but got lr={mem.lr}")
        _check(mem.weight_decay >= 0, file, f"{w}.weight_decay", f"must be >= 0, but got weight_decay={mem.weight_decay}")
    return spec


def grid_size(arm: ArmSpec, search: SearchSpec) -> int:
    return (arm.lr.points or search.points) * (arm.weight_decay.points or search.points)


def load_spec(path, data_path: str | None = None) -> StudySpec:
    """Read, strictly parse and validate a spec file. A relative data.path is relative to the spec's folder
    (Ray runs trials in other working directories); `data_path` (the --data-path flag) replaces it."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"invalid spec: file {path} does not exist")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{p.name}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p.name}: invalid spec: expected a mapping at the top level, but got {type(raw).__name__}")
    raw.setdefault("name", p.stem)
    spec = _build(StudySpec, raw, p.name, "")
    new_path = data_path if data_path is not None else spec.data.path
    if new_path is not None:
        q = Path(os.path.expandvars(new_path)).expanduser()
        base = Path.cwd() if data_path is not None else p.resolve().parent
        spec = dataclasses.replace(spec, data=dataclasses.replace(spec.data, path=str((base / q).resolve())))
    return validate(spec, p.name)


def spec_from_dict(raw: dict) -> StudySpec:
    return validate(_build(StudySpec, raw, None, ""))


def shrink_for_smoke(spec: StudySpec) -> StudySpec:
    """A few members and one epoch: the same code path, minutes to run on a CPU."""
    d = spec.data
    if d.dataset in ("cifar10", "cifar100", "parquet"):
        d = dataclasses.replace(d, train_subset=min(d.train_subset or 10**9, 256),
                                test_subset=min(d.test_subset or 10**9, 256))
    arms = tuple(dataclasses.replace(a, lr=dataclasses.replace(a.lr, points=2),
                                     weight_decay=dataclasses.replace(a.weight_decay, points=2)) for a in spec.arms)
    search = dataclasses.replace(spec.search, points=2, trials=min(spec.search.trials or 2, 2), seeds=spec.search.seeds[:1])
    train = dataclasses.replace(spec.train, epochs=1, warmup_epochs=0.0, batch_size=min(spec.train.batch_size, 64))
    execution = dataclasses.replace(spec.execution, members_per_trial=min(spec.execution.members_per_trial, 4),
                                    cpus_per_trial=1.0,
                                    gpus_per_trial=0.0 if not _cuda_available() else spec.execution.gpus_per_trial)
    return dataclasses.replace(spec, name=f"{spec.name}-smoke", data=d, arms=arms, search=search, train=train,
                               execution=execution, members=spec.members[:4])


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def grid_axis(r: Range, default_points: int) -> list[float]:
    """Log-spaced grid points from low to high inclusive."""
    n = r.points or default_points
    if n == 1:
        return [r.low]
    inner = [float(math.exp(math.log(r.low) + i * (math.log(r.high) - math.log(r.low)) / (n - 1))) for i in range(1, n - 1)]
    return [r.low, *inner, r.high]  # exact endpoints: Optuna checks grid values against [low, high]


def arm_member(arm: ArmSpec, lr: float, weight_decay: float, seed: int) -> MemberSpec:
    return MemberSpec(arm.optimizer, arm.decay, float(lr), float(weight_decay), int(seed), arm.momentum,
                      arm.nesterov, arm.betas, arm.eps)


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


def total_steps(spec: StudySpec, train_size: int) -> int:
    return spec.train.epochs * max(1, train_size // min(spec.train.batch_size, train_size))


def timescale_warnings(spec: StudySpec, train_size: int) -> list[str]:
    """SCIENCE.md: decay forgets over τ = 1/(lr·λ) steps (coupled, decoupled) or 1/λ (independent). A grid
    whose τ never comes within 10× of the run's length cannot show any λ dependence."""
    T = total_steps(spec, train_size)
    out = []
    for a in spec.arms:
        if a.decay == "coupled" and a.optimizer != "sgd":
            continue  # coupled decay passes through the adaptive normalization (÷√v̂): τ = 1/(lr·λ) does not apply
        if a.decay == "independent":
            taus = [1 / a.weight_decay.high, 1 / a.weight_decay.low]
        else:
            taus = [1 / (a.lr.high * a.weight_decay.high), 1 / (a.lr.low * a.weight_decay.low)]
        lo, hi = min(taus), max(taus)
        if lo > 10 * T:
            out.append(f"arm {a.name}: decay timescale τ spans {lo:.3g}..{hi:.3g} steps, always > 10× the run's "
                       f"{T} steps: decay does nothing and the landscape will be flat in weight_decay; raise weight_decay")
        elif hi < T / 10:
            out.append(f"arm {a.name}: decay timescale τ spans {lo:.3g}..{hi:.3g} steps, always < 1/10 of the run's "
                       f"{T} steps: weights collapse everywhere; lower weight_decay")
    return out
