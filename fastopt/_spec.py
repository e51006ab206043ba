"""Each optimizer's specification, written once: its hyperparameters (names,
defaults, ranges, which are keyword-only), the rules between them, and its
state. The classes, the functional API and the tests' oracle derive their
signatures, defaults and checks from these; new front-ends should too.

The defaults and ranges are ``torch.optim``'s.
"""

from __future__ import annotations

import inspect
import math
import textwrap
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from . import _checks as C
from . import _state_dtype

__all__ = ["Hyper", "Spec", "SGD", "ADAGRAD", "ADAM", "ADAMW", "SPECS"]


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: a real number ``>= low`` (``"real"``), a bool
    (``"flag"``), a pair of reals in [0, 1) (``"betas"``), the state's
    storage (``"state_dtype"``: None or a name of ``_state_dtype.NAMES``) or
    a seed (``"seed"``: an integer in [0, 2**32))."""

    name: str
    default: Any
    kind: str = "real"
    low: float | None = 0.0
    keyword_only: bool = False

    def check(self, value: Any) -> Any:
        """``value`` checked and normalised (a float, a bool or a pair of floats)."""
        if self.kind == "flag":
            return C.check_flag(self.name, value)
        if self.kind == "betas":
            return C.check_betas(value)
        if self.kind == "state_dtype":
            return _state_dtype.check_name(value)
        if self.kind == "seed":
            return C.check_seed(self.name, value)
        return C.check_real(self.name, value, low=self.low)


@dataclass(frozen=True)
class Spec:
    """An optimizer: its hyperparameters, cross-rules and state.

    ``rules`` checks a group of already-normalised values together (raises
    ``ValueError``); ``pinned`` are values a variant fixes (AdamW's decoupled
    decay), refused when a group sets them otherwise and kept when a state
    dict is loaded; ``state_keys`` are the arrays of a parameter's state and
    ``has_step`` whether it counts steps. ``update_rule`` is the rule as
    reStructuredText math, shown in the class's and the function's docstrings.
    """

    name: str
    hypers: tuple[Hyper, ...]
    state_keys: tuple[str, ...]
    has_step: bool = True
    rules: Callable[[dict], None] | None = None
    pinned: Mapping[str, Any] = field(default_factory=dict)
    update_rule: str = ""

    @property
    def defaults(self) -> dict[str, Any]:
        """``{name: default}``, in signature order."""
        return {h.name: h.default for h in self.hypers}

    def hyper(self, name: str) -> Hyper:
        """The hyperparameter ``name``."""
        return next(h for h in self.hypers if h.name == name)

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every hyperparameter of ``values`` checked and normalised, then the
        pinned values and the cross-rules; ``values`` must hold them all."""
        missing = [h.name for h in self.hypers if h.name not in values]
        if missing:
            raise ValueError(f"lacks hyperparameter(s) {missing}")
        checked = {h.name: h.check(values[h.name]) for h in self.hypers}
        for name, value in self.pinned.items():
            if checked[name] != value:
                raise ValueError(f"{self.name}'s {name} must be {value}; "
                                 f"it is what makes it {self.name}")
        if self.rules is not None:
            self.rules(checked)
        return checked

    def variant(self, name: str, pinned: Mapping[str, Any] | None = None,
                **defaults: Any) -> Spec:
        """This spec under another name, with other defaults and pinned values."""
        hypers = tuple(replace(h, default=defaults.pop(h.name, h.default)) for h in self.hypers)
        if defaults:
            raise ValueError(f"{self.name} has no hyperparameter(s) {sorted(defaults)}")
        return replace(self, name=name, hypers=hypers, pinned=dict(pinned or {}))

    def document(self, obj: Any) -> Any:
        """Put the update rule where ``obj``'s docstring says ``{update_rule}``."""
        if obj.__doc__ and "{update_rule}" in obj.__doc__:
            rule = textwrap.indent(self.update_rule.strip("\n"), "    ").lstrip()
            obj.__doc__ = obj.__doc__.replace("{update_rule}", rule)
        return obj

    def parameters(self) -> list[inspect.Parameter]:
        """The hyperparameters a caller may set, as signature parameters
        (positional-or-keyword, then keyword-only), with their defaults."""
        return [inspect.Parameter(h.name, inspect.Parameter.KEYWORD_ONLY if h.keyword_only
                                  else inspect.Parameter.POSITIONAL_OR_KEYWORD, default=h.default,
                                  annotation=_ANNOTATIONS[h.kind])
                for h in self.hypers if h.name not in self.pinned]


_ANNOTATIONS = {"real": "float", "flag": "bool", "betas": "tuple[float, float]",
                "state_dtype": "str | None", "seed": "int"}
# How the state is stored (README, "Reduced-precision state"): None keeps the
# parameter's dtype.
_STATE_DTYPE = Hyper("state_dtype", None, "state_dtype", keyword_only=True)
# How bfloat16 parameters are written back (README, "bfloat16 parameters"):
# from a float32 master copy kept in the state, and rounded at random (a
# stream of the step count, which SGD does not keep: it rounds to nearest).
_MASTER = Hyper("master_weights", False, "flag", keyword_only=True)
_ROUNDING = (Hyper("stochastic_rounding", False, "flag", keyword_only=True),
             Hyper("rounding_seed", 0, "seed", keyword_only=True))
# The optimizer classes' alone: functional and fastopt.torch take no bfloat16 parameters.
BFLOAT16_PARAMS = ("master_weights", "stochastic_rounding", "rounding_seed")


# (NumPy's scalars too: a schedule computed with NumPy gives np.float64 rates)
_NUMPY_FLOATS = (np.float64, np.float32, np.float16)
_CACHEABLE = (float, int, bool, str, type(None), *_NUMPY_FLOATS, np.bool_,
              np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)


def immutable(value: Any) -> bool:
    """Whether ``value`` is of a kind that cannot change in place (so a
    checked value can be recognised again by identity or equality)."""
    return type(value) in _CACHEABLE


def _signed(value: Any) -> Any:
    """``value``, a zero with its sign (-0.0 == 0.0, and a learning rate's
    sign is the result's)."""
    if type(value) in _NUMPY_FLOATS:  # as a Python float (its type is in the key beside it):
        value = float(value)  # a NumPy scalar compared with the tuple below broadcasts
    if type(value) is float and value == 0:
        return (value, math.copysign(1.0, value))
    return value


def cache_key(group: Mapping[str, Any]) -> tuple | None:
    """A group's hyperparameters with their types, to compare with the last
    checked ones (``0 == False`` and ``1 == True`` must not count as equal),
    or None when a value is of a kind that is checked at every step."""
    key = []
    for name, value in group.items():
        if name == "params":
            continue
        kind = type(value)
        if immutable(value):
            key.append((name, kind, _signed(value)))
        elif kind in (tuple, list) and all(immutable(x) for x in value):
            key.append((name, kind, tuple((type(x), _signed(x)) for x in value)))
        else:
            return None
    return tuple(key)


# The keys a learning-rate schedule keeps in a parameter group besides the
# hyperparameters (torch.optim.lr_scheduler's, and fastopt.lr_scheduler's):
# allowed in a group, and carried by state dicts, so that a schedule resumes.
SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum")


def check_known(group: Mapping[str, Any], defaults: Mapping[str, Any],
                where: str | None = None) -> None:
    """Refuse (ValueError) keys of parameter group ``group`` (named ``where``)
    that are neither ``"params"``, a hyperparameter (a key of ``defaults``)
    nor a schedule's."""
    unknown = sorted(set(group) - set(defaults) - {"params"} - set(SCHEDULE_KEYS))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {unknown}" + (f" in {where}" if where else ""))


def schedule_keys(where: str, saved: Mapping[str, Any]) -> dict[str, float]:
    """The schedule keys of ``saved`` (a saved parameter group, named
    ``where``), checked: finite real numbers >= 0."""
    return {key: C.check_real(f"{where}['{key}']", saved[key], low=0.0)
            for key in SCHEDULE_KEYS if key in saved}


def _sgd_rules(h: dict) -> None:
    if h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
        raise ValueError("nesterov requires momentum > 0 and dampening == 0")


SGD = Spec("SGD", (
    Hyper("lr", 1e-3),
    Hyper("momentum", 0),
    Hyper("dampening", 0, low=None),
    Hyper("weight_decay", 0),
    Hyper("nesterov", False, "flag"),
    Hyper("maximize", False, "flag", keyword_only=True),
    _STATE_DTYPE,
    _MASTER,
), state_keys=("momentum_buffer",), has_step=False, rules=_sgd_rules, update_rule=r""".. math::

    g &\leftarrow -g \ \text{if maximize};\quad g \leftarrow g + \lambda p \ \text{if}\ \lambda \ne 0 \\
    b &\leftarrow g \ \text{(first step)}, \quad b \leftarrow \mu b + (1-\tau) g \ \text{(later)} \\
    g &\leftarrow g + \mu b \ \text{(nesterov)}, \quad g \leftarrow b \ \text{(otherwise)} \\
    p &\leftarrow p - \eta g
""")

ADAGRAD = Spec("Adagrad", (
    Hyper("lr", 1e-2),
    Hyper("lr_decay", 0),
    Hyper("weight_decay", 0),
    Hyper("initial_accumulator_value", 0),
    Hyper("eps", 1e-10),
    Hyper("maximize", False, "flag", keyword_only=True),
    _STATE_DTYPE,
    _MASTER, *_ROUNDING,
), state_keys=("sum",), update_rule=r""".. math::

    g &\leftarrow -g \ \text{if maximize};\quad g \leftarrow g + \lambda p \ \text{if}\ \lambda \ne 0 \\
    s &\leftarrow s + g^2 \\
    p &\leftarrow p - \frac{\eta}{1 + (t-1)\,\delta}\,\frac{g}{\sqrt{s} + \epsilon}
""")

ADAM = Spec("Adam", (
    Hyper("lr", 1e-3),
    Hyper("betas", (0.9, 0.999), "betas"),
    Hyper("eps", 1e-8),
    Hyper("weight_decay", 0),
    Hyper("amsgrad", False, "flag"),
    Hyper("maximize", False, "flag", keyword_only=True),
    Hyper("decoupled_weight_decay", False, "flag", keyword_only=True),
    _STATE_DTYPE,
    _MASTER, *_ROUNDING,
), state_keys=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"), update_rule=r""".. math::

    g &\leftarrow -g \ \text{if maximize} \\
    p &\leftarrow p\,(1 - \eta\lambda) \ \text{(decoupled)}, \quad
        g \leftarrow g + \lambda p \ \text{(otherwise; only if}\ \lambda \ne 0) \\
    m &\leftarrow m + (1-\beta_1)(g - m), \qquad
    v \leftarrow \beta_2 v + (1-\beta_2)\, g^2 \\
    \hat v &\leftarrow \max(\hat v, v) \ \text{(amsgrad; then}\ \hat v \ \text{replaces}\ v) \\
    p &\leftarrow p - \frac{\eta}{1-\beta_1^t}\,
        \frac{m}{\sqrt{v}/\sqrt{1-\beta_2^t} + \epsilon}
""")

ADAMW = ADAM.variant("AdamW", pinned={"decoupled_weight_decay": True},
                     weight_decay=1e-2, decoupled_weight_decay=True)

SPECS = {spec.name: spec for spec in (SGD, ADAGRAD, ADAM, ADAMW)}
# By update rule (a kernel's ``rule_function``; AdamW's rule is Adam's).
RULE_SPECS = {"sgd": SGD, "adagrad": ADAGRAD, "adam": ADAM}
