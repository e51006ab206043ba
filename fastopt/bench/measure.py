"""The CPU measurements: one result dict per case, times in milliseconds (or µs where named).

Each function sets its contenders up, times them with ``interleaved`` and
runs the ``noise`` checks on what it got, so every row carries its own
``spread_pct`` and, when a check failed, ``flags``, ``warnings`` and
``suspect``.
"""

import statistics

import numpy as np

from ..flat import FlatParams
from ..optimizers import Adam
from .cases import bytes_per_step, data, make_step, numpy_step, state_bytes_per_param, target_for
from .noise import check_guard_cost, check_row, check_same_times, check_scaling
from .timing import interleaved, median_time, ratio


def _ms(times, name):
    return statistics.median(times[name]) * 1e3


def roofline_time(variant, n, dtype, repeats):
    """Median seconds of the in-place kernel with ``variant``'s traffic on ``n``
    elements (CPU, the target fastopt picks for ``n``); its arrays are freed after."""
    return median_time(make_step(variant, n, dtype, kind="roofline")[0], repeats, min_seconds=0.2)


def measure(variant, n, dtype, rounds, numpy_repeats, torch=None, bnb=None):
    """Time one variant at one size on the CPU; return a result dict (times in ms).

    fastopt, the roofline (and torch's fused optimizer, if ``torch`` is a
    ``TorchChild``, and bitsandbytes' 8-bit AdamW for the variants it has, if
    ``bnb`` is a ``BitsandbytesChild``) are interleaved; NumPy, an order of
    magnitude slower at size, is timed after them.
    """
    if torch:
        torch.setup(variant, n, dtype)
    children = {}
    if bnb and variant in bnb.VARIANTS:
        bnb.setup(variant, n, dtype)
        children["bitsandbytes"] = bnb
    times = interleaved({"fastopt": make_step(variant, n, dtype)[0],
                         "roofline": make_step(variant, n, dtype, kind="roofline")[0]},
                        rounds, torch, children)
    t_fast = statistics.median(times["fastopt"])
    p, g = data(n, dtype)
    q, state, count = p.copy(), {}, [0]

    def numpy_once():
        count[0] += 1
        numpy_step(variant, q, g, state, count[0])

    t_numpy = median_time(numpy_once, numpy_repeats)
    row = {
        "optimizer": variant, "n": n, "dtype": np.dtype(dtype).name, "target": target_for(n),
        "fastopt_ms": t_fast * 1e3, "gbps": bytes_per_step(variant, n, dtype) / t_fast / 1e9,
        "state_bytes": state_bytes_per_param(variant, dtype),
        "roofline_ms": _ms(times, "roofline"),
        "roofline_pct": 100 * ratio(times, "roofline", "fastopt"),
        "numpy_ms": t_numpy * 1e3, "speedup_numpy": t_numpy / t_fast,
    }
    if torch:
        row["torch_ms"] = _ms(times, "torch")
        row["speedup_torch"] = ratio(times, "torch", "fastopt")
    if children:
        row["bnb_ms"] = _ms(times, "bitsandbytes")
        row["speedup_bnb"] = ratio(times, "bitsandbytes", "fastopt")
    return check_row(row, times, {"fastopt": ("fastopt_ms", "gbps", "speedup_numpy"),
                                  "roofline": ("roofline_pct",),
                                  "torch": ("torch_ms", "speedup_torch"),
                                  "bitsandbytes": ("bnb_ms", "speedup_bnb")})


def check_rows(rows):
    """The checks across rows (1 ms and up): rows of different traffic with the same
    time, and times out of step with the next size of the same optimizer and dtype."""
    def moved(r):
        return bytes_per_step(r["optimizer"], r["n"], r["dtype"])

    flagged = check_same_times(rows, "fastopt_ms", moved, floor=1.0, also=("gbps",))
    for key in {(r["optimizer"], r["dtype"]) for r in rows}:
        group = [r for r in rows if (r["optimizer"], r["dtype"]) == key]
        flagged += check_scaling(group, "fastopt_ms", moved, floor=1.0, also=("gbps",))
    return list({id(r): r for r in flagged}.values())


def measure_many(count, size, dtype, rounds, torch=None):
    """Adam over ``count`` tensors of ``size`` elements: FlatParams (one call), one
    array per tensor through the class API, the roofline over all the elements
    and, with ``torch``, torch's fused Adam over ``count`` tensors; interleaved."""
    n = count * size
    p, g = data(n, dtype)
    flat = FlatParams({f"t{i}": size for i in range(count)}, dtype)
    flat.data[:], flat.grad_data[:] = p, g
    arrays = [p[i * size:(i + 1) * size].copy() for i in range(count)]
    grads = [g[i * size:(i + 1) * size].copy() for i in range(count)]
    del p, g
    # (the flat step on the target its roofline is timed with; the separate
    # arrays as fastopt picks for each)
    flat_opt, sep_opt = Adam(flat, lr=1e-3, target=target_for(n)), Adam(arrays, lr=1e-3)
    if torch:
        torch.setup("adam", n, dtype, count=count)
    times = interleaved({"flat": flat_opt.step, "separate": lambda: sep_opt.step(grads),
                         "roofline": make_step("adam", n, dtype, kind="roofline")[0]},
                        rounds, torch)
    out = {"tensors": count, "size": size, "dtype": np.dtype(dtype).name,
           "flat_ms": _ms(times, "flat"), "separate_ms": _ms(times, "separate"),
           "roofline_ms": _ms(times, "roofline"),
           "roofline_pct": 100 * ratio(times, "roofline", "flat")}
    if torch:
        out["torch_ms"] = _ms(times, "torch")
        out["speedup_torch"] = ratio(times, "torch", "flat")
    return check_row(out, times, {"flat": ("flat_ms",), "separate": ("separate_ms",),
                                  "roofline": ("roofline_pct",),
                                  "torch": ("torch_ms", "speedup_torch")})


def measure_guards(n, dtype, rounds):
    """Adam step with and without ``check_finite`` (and ``grad_scale``), interleaved."""
    p, g = data(n, dtype)
    opt = Adam([p], lr=1e-3)
    times = interleaved({"plain": lambda: opt.step([g]),
                         "checked": lambda: opt.step([g], check_finite=True),
                         "scaled": lambda: opt.step([g], check_finite=True, grad_scale=1024.0)},
                        rounds)
    out = {"n": n, "dtype": np.dtype(dtype).name, "plain_ms": _ms(times, "plain"),
           "check_finite_ms": _ms(times, "checked"),
           "check_finite_scaled_ms": _ms(times, "scaled"),
           "check_finite_cost_pct": 100 * (ratio(times, "checked", "plain") - 1)}
    check_row(out, times, {"plain": ("plain_ms", "check_finite_cost_pct"),
                           "checked": ("check_finite_ms", "check_finite_cost_pct"),
                           "scaled": ("check_finite_scaled_ms",)})
    return check_guard_cost(out)


def threshold_sizes():
    """The sizes ``measure_threshold`` tries: powers of two from 2**10 to 2**20."""
    return [2 ** k for k in range(10, 21)]


def measure_threshold(dtype, rounds):
    """Serial and parallel Adam steps over ``threshold_sizes()``, interleaved.

    Returns ``(rows, crossover)``: the rows (µs), and the first size from
    which parallel wins at every larger size too, or None when it does not
    win at the largest.
    """
    rows = []
    for n in threshold_sizes():
        p, g = data(n, dtype)
        serial, parallel = Adam([p.copy()], target="serial"), Adam([p.copy()], target="parallel")
        times = interleaved({"serial": lambda: serial.step([g]),
                             "parallel": lambda: parallel.step([g])}, rounds)
        rows.append(check_row({"n": n, "serial_us": _ms(times, "serial") * 1e3,
                               "parallel_us": _ms(times, "parallel") * 1e3}, times,
                              {"serial": ("serial_us",), "parallel": ("parallel_us",)}))
    for key in ("serial_us", "parallel_us"):  # 1 ms and up: not the per-call cost
        check_same_times(rows, key, lambda r: r["n"], floor=1000.0)
        check_scaling(rows, key, lambda r: r["n"], floor=1000.0)
    crossover = None
    for r in reversed(rows):
        if r["parallel_us"] >= r["serial_us"]:
            break
        crossover = r["n"]
    return rows, crossover
