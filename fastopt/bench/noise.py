"""Whether the bench's figures can be believed: checks made on the timings themselves.

A busy machine does not only make figures noisy, it can make them
impossible: a roofline kernel that runs slower than the step it bounds
("200% of roofline"), a competitor descheduled in the middle of its block
("823x faster than torch"), or steps that all take the same two scheduler
time slices whatever their size ("every row at 8.0 ms"). Each check below
looks for one of these in the numbers, without timing anything, so that the
report can say which figures not to trust:

- ``check_row``: the spread of each contender's per-round times, a
  percentage of the roofline above 100% (beyond ``ROOFLINE_TOLERANCE``),
  a ratio beyond what two implementations of the step can differ by
  (``RATIO_LIMITS``);
- ``check_same_times``: rows of different work that took the same time;
- ``check_scaling``: a row far slower (per unit of work) than its
  neighbour in size;
- ``busy``: the machine's load average against its cores.

A row that fails a check gets ``flags`` (short names), ``warnings``
(sentences) and ``suspect`` (the keys of the figures not to trust, which the
report marks with "?").
"""

import os
import statistics

# Above this % of its roofline a figure is impossible, not just lucky: the
# roofline is the same traffic with no arithmetic, so the step can match it
# (measurement error of a few %) but not beat it.
ROOFLINE_TOLERANCE = 110.0
# Interquartile range of a contender's per-round times over their median,
# above which its figures are called noisy.
SPREAD_LIMIT = 0.25
# Both sides of these ratios are one pass over the same arrays (the torch one
# fused too), so they cannot differ by more than this factor either way;
# beyond it one side was descheduled. (NumPy's whole-array code makes ~10
# passes with temporaries: measured 3x to 25x slower.)
RATIO_LIMITS = {"speedup_torch": 20.0, "speedup_numpy": 100.0}
# Rows whose times agree to this fraction while their work differs by
# ``WORK_APART`` or more, at least ``SAME_TIME_ROWS`` of them, are timed by
# something else than their work (the scheduler's time slices).
SAME_TIME, WORK_APART, SAME_TIME_ROWS = 0.005, 1.5, 3
# Between neighbouring sizes, the time per unit of work may change by this
# factor at most (leaving the caches costs up to ~3x per element).
SCALING_LIMIT = 4.0


def spread(values):
    """Interquartile range of ``values`` over their median; 0.0 for fewer than two."""
    if len(values) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    mid = statistics.median(values)
    return (q3 - q1) / mid if mid > 0 else 0.0


def flag(row, code, warning, *suspect):
    """Record on ``row`` that check ``code`` failed, why, and which figures to doubt."""
    row.setdefault("flags", [])
    row.setdefault("warnings", [])
    row.setdefault("suspect", [])
    if code not in row["flags"]:
        row["flags"].append(code)
    row["warnings"].append(warning)
    for k in suspect:
        if k not in row["suspect"]:
            row["suspect"].append(k)


def check_row(row, times=None, depends=None, roofline_key="roofline_pct"):
    """Check one result row; return it.

    ``times`` (contender -> per-round seconds, as ``interleaved`` returns)
    gives the spreads, stored as ``row["spread_pct"]``; ``depends`` maps a
    contender to the row's keys computed from its times, which are doubted
    when it is noisy.
    """
    depends = depends or {}
    if times:
        row["spread_pct"] = {name: round(100 * spread(ts), 1) for name, ts in times.items()}
        noisy = {name: pct for name, pct in row["spread_pct"].items() if pct > 100 * SPREAD_LIMIT}
        if noisy:
            flag(row, "spread", "times varied between rounds (interquartile range over median): "
                                + ", ".join(f"{name} {pct:.0f}%" for name, pct in noisy.items()),
                 *[key for name in noisy for key in depends.get(name, ())])
    pct = row.get(roofline_key)
    if pct is not None and pct > ROOFLINE_TOLERANCE:
        flag(row, "roofline", f"{pct:.0f}% of roofline is impossible (the roofline is the same "
                              "traffic without the arithmetic): one of the two was slowed down "
                              "while it ran", roofline_key, "gbps")
    for key, limit in RATIO_LIMITS.items():
        value = row.get(key)
        if value is not None and not 1 / limit <= value <= limit:
            flag(row, "ratio", f"{key} = {value:.3g}x is beyond the {limit:.0f}x two one-pass "
                               "implementations can differ by: one side was descheduled", key)
    return row


def check_same_times(rows, time_key, work_of, floor, also=()):
    """Flag the rows whose ``time_key`` equals that of rows with different work.

    ``work_of(row)`` is what the step must do (bytes moved, elements); only
    times of at least ``floor`` (same unit as ``time_key``) count, since
    below that a step's time is its fixed per-call cost, the same for all
    sizes. Returns the flagged rows.
    """
    timed = sorted((r for r in rows if r.get(time_key) is not None and r[time_key] >= floor),
                   key=lambda r: r[time_key])
    flagged = []
    i = 0
    while i < len(timed):
        j = i
        while j + 1 < len(timed) and timed[j + 1][time_key] <= timed[i][time_key] * (1 + SAME_TIME):
            j += 1
        group = timed[i:j + 1]
        works = [work_of(r) for r in group]
        if len(group) >= SAME_TIME_ROWS and max(works) >= WORK_APART * min(works):
            for r in group:
                flag(r, "same-time", f"{time_key} = {r[time_key]:.4g} in {len(group)} rows whose "
                                     f"work differs up to {max(works) / min(works):.1f}x: timed by "
                                     "the scheduler's time slices, not by the step",
                     time_key, *also)
            flagged += group
        i = j + 1
    return flagged


def check_scaling(rows, time_key, work_of, floor, also=()):
    """Flag rows whose time does not follow their work, against the next size up.

    Between two rows of increasing work (``work_of``), the cost per unit of
    work may change (caches, the per-call cost) but not by more than
    ``SCALING_LIMIT`` either way: beyond that, the slower one was held up.
    Only a time of at least ``floor`` is doubted. Returns the flagged rows.
    """
    ordered = sorted((r for r in rows if r.get(time_key)), key=work_of)
    flagged = []
    for a, b in zip(ordered, ordered[1:]):
        works = work_of(b) / work_of(a)
        per_work = b[time_key] / a[time_key] / works
        change = f"{time_key} {a[time_key]:.4g} -> {b[time_key]:.4g} for {works:.3g}x the work"
        if a in flagged:  # held up, and so out of step with both neighbours: said once
            continue
        if per_work > SCALING_LIMIT and b[time_key] >= floor:
            slow = b
            flag(b, "scaling", f"{change} from the size below: this row was held up",
                 time_key, *also)
        elif per_work < 1 / SCALING_LIMIT and a[time_key] >= floor:
            slow = a
            flag(a, "scaling", f"{change} at the size above: this row was held up",
                 time_key, *also)
        else:
            continue
        flagged.append(slow)
    return flagged


def check_guard_cost(row, key="check_finite_cost_pct"):
    """Flag a ``check_finite`` cost no extra read of the gradient can have; return ``row``.

    The check reads the gradient once more, which the step reads anyway: it
    cannot make the step faster (beyond 10% of noise), nor, once the step
    takes a millisecond or more (``plain_ms``; below, a second call's fixed
    cost counts), cost as much again as the whole step.
    """
    cost = row[key]
    if cost < -10 or (cost > 100 and row["plain_ms"] >= 1.0):
        flag(row, "guard-cost", f"check_finite's cost of {cost:+.0f}% is outside what one more "
                                "read of the gradient can cost (-10% to +100%)", key)
    return row


def load():
    """The 1-minute load average, or None where the system does not say."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def busy(load_before, load_after, cores):
    """A warning when the load average exceeded the cores during the run, else None."""
    loads = [x for x in (load_before, load_after) if x is not None]
    if loads and cores and max(loads) > cores:
        return (f"the machine was busy (load average up to {max(loads):.1f} on {cores} cores): "
                "absolute times are noisy; ratios, measured round by round, hold up better")
    return None
