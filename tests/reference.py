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


# --- reduced-precision state ---------------------------------------------------------
# Written from the description (README, "Reduced-precision state"), whole-array:
# bfloat16 by ml_dtypes' own rounding; block-wise codes by sorted search.

QUANT_BLOCK = {"int8": 256, "int4": 128}
QUANT_MIN_SIZE = 4096


def dynamic_map(bits, signed):
    """Every value of a dynamic-exponent map of ``bits`` bits, sorted (float32).

    A magnitude field of ``m`` bits reads: ``e`` leading zeros, a one, then
    ``m - 1 - e`` fraction bits ``f``: ``10**-e * (0.1 + 0.9 * (f + 1) / 2**(m-1-e))``;
    all zeros is 0. A signed map adds a sign bit (so 0 appears twice).
    """
    m = bits - 1 if signed else bits
    values = []
    for pattern in range(2 ** m):
        if pattern == 0:
            values.append(0.0)
            continue
        e = m - pattern.bit_length()
        k = m - 1 - e
        f = pattern - (1 << k)
        values.append(10.0 ** -e * (0.1 + 0.9 * (f + 1) / 2 ** k))
    values = np.array(values)
    if signed:
        values = np.concatenate([values, -values])
    return np.sort(values.astype(np.float32))


def quant_maps(kind):
    """``(first-moment map, second-moment map)`` of ``kind``."""
    if kind == "int8":
        return dynamic_map(8, True), dynamic_map(8, False)
    return dynamic_map(4, True), (np.arange(16, dtype=np.float32) + 1) / np.float32(16)


def quantize(x, kind, signed):
    """``(codes, absmax)`` of float32 ``x`` (flat): int8 one code a byte,
    int4 two a byte (the even element in the low nibble)."""
    table = quant_maps(kind)[0 if signed else 1]
    mids = ((table[:-1].astype(np.float64) + table[1:]) / 2).astype(np.float32)
    if table[0] == 0:  # the unsigned map: no positive value rounds to 0
        mids[0] = 0
    block = QUANT_BLOCK[kind]
    n = x.size
    padded = np.zeros(-(-n // block) * block, np.float32)
    padded[:n] = x
    # The block's scale stays finite: infinity and NaN count as the largest
    # finite float32 (the elements themselves still take the top code).
    magnitude = np.abs(padded.reshape(-1, block))
    magnitude = np.where(np.isfinite(magnitude), magnitude, np.finfo(np.float32).max)
    absmax = magnitude.max(axis=1)
    with np.errstate(divide="ignore"):
        inv = np.where(absmax > 0, np.float32(1) / absmax, np.float32(0)).astype(np.float32)
    with np.errstate(invalid="ignore"):
        normal = x * np.repeat(inv, block)[:n]
    codes = np.searchsorted(mids, normal, side="left").astype(np.uint8)
    if kind == "int4":
        codes = np.concatenate([codes, np.zeros(n % 2, np.uint8)])
        codes = codes[0::2] | (codes[1::2] << 4)
    return codes, absmax.astype(np.float32)


def dequantize(codes, absmax, n, kind, signed):
    table = quant_maps(kind)[0 if signed else 1]
    if kind == "int4":
        codes = np.stack([codes & 15, codes >> 4], axis=1).reshape(-1)
    with np.errstate(invalid="ignore"):
        return table[codes[:n]] * np.repeat(absmax, QUANT_BLOCK[kind])[:n]


def to_bf16(x):
    import ml_dtypes
    return x.astype(ml_dtypes.bfloat16).astype(np.float32)


def stored_step(step, p, g, state, signs, state_dtype, **hp):
    """One ``step`` (``sgd_step``, ``adagrad_step``, ``adam_step``) with its
    state arrays (named in ``signs``: name -> signed map) held as
    ``state_dtype``: decoded to float32, updated, stored again. A stored
    state is ``{"codes", "absmax"}`` (block-wise) or a float32 array."""
    blockwise = state_dtype in QUANT_BLOCK and p.size >= QUANT_MIN_SIZE
    n = p.size
    full = dict(state)
    for name in signs:
        if name in state and blockwise:
            full[name] = dequantize(*state[name], n, state_dtype, signs[name]).reshape(p.shape)
    p, new = step(p, g, full, **hp)
    for name in signs:
        if name not in new:
            continue
        if blockwise:
            new[name] = quantize(new[name].reshape(-1), state_dtype, signs[name])
        elif state_dtype == "bfloat16":
            new[name] = to_bf16(new[name])
    return p, new


# --- bfloat16 parameters ---------------------------------------------------------------
# Written from the description (README, "bfloat16 parameters"): the update in
# float32 on the widened parameter (or its float32 master copy), then the new
# value rounded to bfloat16: to nearest by ml_dtypes' own cast, or at random.

def random16(seed, n):
    """The 16 random bits of elements 0..n-1 under a 32-bit seed: murmur3's
    32-bit finaliser (xor-shift 16, times 0x85EBCA6B, xor-shift 13, times
    0xC2B2AE35, xor-shift 16, products modulo 2**32) of the index (its high
    half xor-ed into its low) xor the seed; the low 16 bits."""
    i = np.arange(n, dtype=np.uint64)
    h = (((i >> np.uint64(32)) ^ i) & np.uint64(0xFFFFFFFF)).astype(np.uint32) ^ np.uint32(seed)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h & np.uint32(0xFFFF)


def rounding_seed(seed, step, size):
    """The stream of stochastic rounding at a parameter's step ``step``."""
    return (seed * 0x9E3779B1 + step * 0x85EBCA77 + size * 0xC2B2AE3D) % 2**32


def to_bf16_stochastic(x, seed):
    """float32 ``x`` (1-D) rounded at random to bfloat16 bits (uint16): the
    random bits added below the kept 16, then truncated; NaN kept quiet."""
    bits = x.astype(np.float32).view(np.uint32)
    out = ((bits.astype(np.uint64) + random16(seed, x.size)) >> np.uint64(16)).astype(np.uint16)
    nan = np.isnan(x)
    out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
    return out


def bf16_param_step(step, p, g, state, master=None, stochastic=False, seed=0, **hp):
    """One ``step`` of bfloat16 parameter ``p`` (an ml_dtypes array) with
    gradient ``g``: returns ``(new p, new state, new master)``."""
    import ml_dtypes
    x = master if master is not None else p.astype(np.float32)
    new, state = step(x, g.astype(np.float32), state, **hp)
    if stochastic:
        t = state.get("t")
        bits = to_bf16_stochastic(new.reshape(-1), rounding_seed(seed, t, p.size))
        out = bits.reshape(p.shape).view(ml_dtypes.bfloat16)
    else:
        out = new.astype(ml_dtypes.bfloat16)
    return out, state, (new if master is not None else None)
