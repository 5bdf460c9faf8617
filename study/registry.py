"""Names the spec may use, with what each needs: optimizers (and their own settings), models, decay modes.

Torch-free, so that `study validate`, `study export` and `--help` never load torch. Each optimizer is
one entry: its settings as a frozen dataclass (field = spec key, default = the optimizer's default) and
where its implementation lives ("module:Class", imported only where training happens), its predictions and
whether it divides by a per-weight √v̂. Adding one (RMSprop was added so) is one entry here and one class in
study/optim.py (its `_update`, and its `preconditioner` if it has one); the spec, the engine, the diagnostics
and the tests that walk the registry take it from there. Datasets have their registry in
study/datasets.py, figures in study/plots.py.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

DECAY_MODES = ("coupled", "decoupled", "independent")
# how an array's member convolutions are computed (study/models.py): auto takes each layer's from the table
# bench/conv_forms.py measured for the device (STUDY_CONV_TABLE), grouped where there is none
CONV_CHOICES = ("auto", "grouped", "bmm")


def _fraction(name: str, value) -> str | None:
    """A coefficient in [0, 1) (momentum, a beta, a smoothing constant), or why not."""
    values = value if isinstance(value, tuple) else (value,)
    if all(0 <= v < 1 for v in values):
        return None
    shown = list(value) if isinstance(value, tuple) else value
    return f"must lie in [0, 1), but got {name}={shown}"


def _positive(name: str, value) -> str | None:
    return None if value > 0 else f"must be > 0, but got {name}={value}"


# Each optimizer's own settings: field = spec key (type as the spec parses it), default = the optimizer's default.
# problems() names each invalid value (field, message): the spec's one-line errors (study/spec.py) come from here.

@dataclass(frozen=True)
class SGDOptions:
    momentum: float = 0.9      # heavy-ball coefficient μ; the whole buffer is scaled by η_t (as torch.optim.SGD)
    nesterov: bool = False

    def problems(self) -> list[tuple[str, str]]:
        out = [("momentum", why)] if (why := _fraction("momentum", self.momentum)) else []
        if self.nesterov and self.momentum <= 0:
            out.append(("nesterov", f"Nesterov momentum needs momentum > 0, but got momentum={self.momentum}"))
        return out


@dataclass(frozen=True)
class AdamOptions:
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def problems(self) -> list[tuple[str, str]]:
        return [(n, why) for n, why in (("betas", _fraction("betas", self.betas)), ("eps", _positive("eps", self.eps)))
                if why]


@dataclass(frozen=True)
class AdagradOptions:
    eps: float = 1e-10

    def problems(self) -> list[tuple[str, str]]:
        return [("eps", why)] if (why := _positive("eps", self.eps)) else []


@dataclass(frozen=True)
class LionOptions:
    betas: tuple[float, float] = (0.9, 0.99)  # Chen et al. 2023: interpolation β1, momentum β2

    def problems(self) -> list[tuple[str, str]]:
        return [("betas", why)] if (why := _fraction("betas", self.betas)) else []


@dataclass(frozen=True)
class RMSpropOptions:              # torch.optim.RMSprop's defaults
    alpha: float = 0.99            # smoothing of the squared-gradient average
    eps: float = 1e-8
    momentum: float = 0.0
    centered: bool = False         # divide by the gradient's estimated standard deviation instead

    def problems(self) -> list[tuple[str, str]]:
        return [(n, why) for n, why in (("alpha", _fraction("alpha", self.alpha)), ("eps", _positive("eps", self.eps)),
                                        ("momentum", _fraction("momentum", self.momentum))) if why]


@dataclass(frozen=True)
class OptimizerEntry:
    name: str
    options: type          # a frozen dataclass of the optimizer's own settings
    implementation: str    # "module:Class" of a torch.optim.Optimizer taking (groups, lr=, decay=, **options)
    # docs/science.md: the predicted slope of log λ*(η) under coupled (L2) decay, None where there is no clean
    # law, and whether coupled decay forgets over τ = 1/(η·λ) (plain SGD; not through ÷√v̂ or a sign)
    coupled_slope: float | None = None
    coupled_law: str = "no clean law: the L2 term passes through the optimizer's normalization"
    # coupled L2 through ÷(√v̂ + ε): weight i decays at η·λ/√v̂_i per step, so the timescale is about
    # √v̂/(η·λ) with √v̂ a typical value (docs/science.md "Placing a grid"); None where no such rule is stated
    coupled_sqrt_v: float | None = None
    # whether its step divides by a per-weight √v̂ (the class's `preconditioner` reads it): its members then
    # record the decay diagnostics of study/diagnostics.py
    preconditioned: bool = False

    @property
    def coupled_timescale(self) -> bool:
        return self.coupled_slope is not None

    def predicted_slope(self, decay: str) -> tuple[float | None, str]:
        """The slope of log λ*(η) the science predicts for this optimizer under `decay`, and its reason."""
        if decay == "decoupled":
            return -1.0, "about −1 (the decay acts through the product η·λ)"
        if decay == "independent":
            return 0.0, "about 0 (separable)"
        return self.coupled_slope, self.coupled_law

    def option_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self.options))

    def resolve(self, given: dict) -> dict:
        """The optimizer's settings: the given values (None = unset) over the entry's defaults."""
        defaults = dataclasses.asdict(self.options())
        return {k: (given[k] if given.get(k) is not None else v) for k, v in defaults.items()}

    def problems(self, given: dict) -> list[tuple[str, str]]:
        """(setting, message) for each given setting out of its range, as the options dataclass checks them."""
        return self.options(**self.resolve(given)).problems()

    def option_types(self) -> dict[str, object]:
        """Each setting's annotation (the spec parses a value as this type)."""
        import typing

        return typing.get_type_hints(self.options)

    def load(self):
        module, cls = self.implementation.split(":")
        return getattr(importlib.import_module(module), cls)


OPTIMIZERS: dict[str, OptimizerEntry] = {e.name: e for e in (
    OptimizerEntry("sgd", SGDOptions, "study.optim:SGD", -1.0, "about −1 (diagonal basin)"),
    OptimizerEntry("adam", AdamOptions, "study.optim:Adam",
                   coupled_law="no clean law: L2 is divided by √v̂; often best near λ → 0",
                   coupled_sqrt_v=1e-3, preconditioned=True),   # the median √v̂ of resnet8 on digits: 4.5e-4 to 3.3e-3 over 240 steps
    OptimizerEntry("adagrad", AdagradOptions, "study.optim:Adagrad",
                   coupled_law="no clean law: L2 is divided by √Σg²", preconditioned=True),
    OptimizerEntry("lion", LionOptions, "study.optim:Lion", coupled_law="no clean law: L2 passes through the sign"),
    OptimizerEntry("rmsprop", RMSpropOptions, "study.optim:RMSprop",
                   coupled_law="no clean law: L2 is divided by √(running mean of g²)", preconditioned=True),
)}
# every setting any optimizer takes; an arm or member may set only those of its own optimizer
OPTIMIZER_SETTINGS = tuple(dict.fromkeys(n for e in OPTIMIZERS.values() for n in e.option_names()))


def arm_name(optimizer: str, decay: str) -> str:
    """The arm's name everywhere: specs, Optuna study names, MLflow tags, landscapes."""
    return f"{optimizer}-{decay}"


MODEL_NAMES = ("resnet8", "resnet20", "resnet26", "resnet32", "resnet44", "resnet56", "resnet110", "preact_resnet18")


MAX_DEPTH = 1202  # the deepest CIFAR ResNet of this family ever trained (He et al. 2016); deeper is a typo


def model_depth(name: str) -> int | None:
    """The depth of `resnet{6n+2}` (8 to MAX_DEPTH), None for any other name."""
    d = name.removeprefix("resnet")   # ASCII digits, no leading zero: one spelling per model (resnet8, not resnet008)
    ok = (name.startswith("resnet") and d.isascii() and d.isdigit() and not d.startswith("0") and len(d) <= 5
          and 8 <= int(d) <= MAX_DEPTH and (int(d) - 2) % 6 == 0)
    return int(d) if ok else None


def known_model(name: str) -> bool:
    return name == "preact_resnet18" or model_depth(name) is not None
