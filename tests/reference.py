"""The oracle: plain-NumPy update rules written straight from docs/update-rules.md.

Deliberately simple and independent of fastopt's code: whole-array
expressions, one line per line of the reference, new arrays instead of
in-place updates. Scalars are computed in Python floats (float64) and cast to
the arrays' dtype, as the reference prescribes.

Each ``*_step`` takes the parameter, gradient, state dict and hyperparameters
and returns ``(new_param, new_state)``; the state dict holds NumPy arrays and
(for Adagrad and Adam) the step count ``t`` of the last step taken.
"""

import numpy as np

from fastopt import _spec

# The defaults are the one statement of them, in fastopt's specs (torch's
# defaults); the rules below are written independently.
SGD_DEFAULTS = _spec.SGD.defaults
ADAGRAD_DEFAULTS = _spec.ADAGRAD.defaults
ADAM_DEFAULTS = _spec.ADAM.defaults


def sgd_step(p, g, state, **hp):
    hp = {**SGD_DEFAULTS, **hp}
    T = p.dtype.type
    lr, mu, tau, wd = hp["lr"], hp["momentum"], hp["dampening"], hp["weight_decay"]
    if hp["maximize"]:
        g = -g
    if wd != 0:
        g = g + T(wd) * p
    state = dict(state)
    if mu != 0:
        if "b" not in state:
            b = g.copy()
        else:
            b = T(mu) * state["b"] + T(1 - tau) * g
        state["b"] = b
        g = g + T(mu) * b if hp["nesterov"] else b
    return p - T(lr) * g, state


def adagrad_init(p, **hp):
    hp = {**ADAGRAD_DEFAULTS, **hp}
    return {"t": 0, "s": np.full_like(p, hp["initial_accumulator_value"])}


def adagrad_step(p, g, state, **hp):
    hp = {**ADAGRAD_DEFAULTS, **hp}
    T = p.dtype.type
    t = state["t"] + 1
    if hp["maximize"]:
        g = -g
    if hp["weight_decay"] != 0:
        g = g + T(hp["weight_decay"]) * p
    clr = hp["lr"] / (1 + (t - 1) * hp["lr_decay"])
    s = state["s"] + g * g
    p = p - T(clr) * g / (np.sqrt(s) + T(hp["eps"]))
    return p, {"t": t, "s": s}


def adam_init(p, **hp):
    hp = {**ADAM_DEFAULTS, **hp}
    state = {"t": 0, "m": np.zeros_like(p), "v": np.zeros_like(p)}
    if hp["amsgrad"]:
        state["vmax"] = np.zeros_like(p)
    return state


def adam_step(p, g, state, **hp):
    hp = {**ADAM_DEFAULTS, **hp}
    T = p.dtype.type
    lr, (b1, b2), eps, wd = hp["lr"], hp["betas"], hp["eps"], hp["weight_decay"]
    t = state["t"] + 1
    if hp["maximize"]:
        g = -g
    if wd != 0:
        if hp["decoupled_weight_decay"]:
            p = p * T(1 - lr * wd)
        else:
            g = g + T(wd) * p
    m = state["m"] + T(1 - b1) * (g - state["m"])
    v = T(b2) * state["v"] + T(1 - b2) * g * g
    new_state = {"t": t, "m": m, "v": v}
    second = v
    if hp["amsgrad"]:
        second = new_state["vmax"] = np.maximum(state["vmax"], v)
    bc1 = 1 - b1 ** t
    bc2 = 1 - b2 ** t
    denom = np.sqrt(second) / T(np.sqrt(bc2)) + T(eps)
    p = p - T(lr / bc1) * m / denom
    return p, new_state
