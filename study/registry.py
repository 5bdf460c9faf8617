"""Names the spec may use, with what each needs: optimizers (and their own settings), models, decay modes.

Torch-free, so that `study validate`, `study export` and `--help` never load torch. Each optimizer is
one entry: its settings as a frozen dataclass (field = spec key, default = the optimizer's default) and
where its implementation lives ("module:Class", imported only where training happens). Adding one
(Lion, say) is one entry here and one class in study/optim.py. Datasets have their registry in
study/datasets.py, figures in study/plots.py.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

DECAY_MODES = ("coupled", "decoupled", "independent")


@dataclass(frozen=True)
class SGDOptions:
    momentum: float = 0.9      # heavy-ball coefficient μ; the whole buffer is scaled by η_t (as torch.optim.SGD)
    nesterov: bool = False


@dataclass(frozen=True)
class AdamOptions:
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8


@dataclass(frozen=True)
class AdagradOptions:
    eps: float = 1e-10


@dataclass(frozen=True)
class LionOptions:
    betas: tuple[float, float] = (0.9, 0.99)  # Chen et al. 2023: interpolation β1, momentum β2


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

    def load(self):
        module, cls = self.implementation.split(":")
        return getattr(importlib.import_module(module), cls)


OPTIMIZERS: dict[str, OptimizerEntry] = {e.name: e for e in (
    OptimizerEntry("sgd", SGDOptions, "study.optim:SGD", -1.0, "about −1 (diagonal basin)"),
    OptimizerEntry("adam", AdamOptions, "study.optim:Adam",
                   coupled_law="no clean law: L2 is divided by √v̂; often best near λ → 0",
                   coupled_sqrt_v=1e-3),   # the median √v̂ of resnet8 on digits: 4.5e-4 to 3.3e-3 over 240 steps
    OptimizerEntry("adagrad", AdagradOptions, "study.optim:Adagrad",
                   coupled_law="no clean law: L2 is divided by √Σg²"),
    OptimizerEntry("lion", LionOptions, "study.optim:Lion", coupled_law="no clean law: L2 passes through the sign"),
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
