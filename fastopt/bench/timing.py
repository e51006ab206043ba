"""How the bench takes its times: medians of blocks, contenders interleaved round by round.

Memory bandwidth on a shared machine drifts by up to 2x within a minute, so
two figures taken one after the other are not comparable. ``interleaved``
gives every contender a block of calls in each round, rotating who goes
first, and ratios are taken round by round (``ratio``): a drift then hits
both sides of a ratio alike.
"""

import statistics
import time


def median_time(fn, repeats, min_seconds=0.0):
    """Median wall time of ``fn()`` in seconds, after one untimed warm-up call.

    Runs at least ``repeats`` times, and on until ``min_seconds`` have passed
    (at most 10,000 runs), so fast calls get enough samples.
    """
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 10_000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def calls_per_block(fn, seconds=0.01):
    """How many calls of ``fn`` (already warm) take about ``seconds``: 3 to 1,000."""
    t0 = time.perf_counter()
    fn()
    return max(3, min(1_000, int(seconds / max(time.perf_counter() - t0, 1e-7))))


def block(fn, calls):
    """Median seconds of ``calls`` timed calls of ``fn``."""
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(contenders, rounds, torch=None, children=None):
    """Time ``contenders`` (name -> zero-argument step, already set up) in turn.

    Each of ``rounds`` rounds runs one block of calls of every contender, the
    first one moving down the list from round to round (whoever goes first
    can look 5-10% faster or slower). With ``torch``, a ``TorchChild`` set up
    for the same job, it takes its turn as "torch"; ``children`` (name ->
    child process set up for the job, such as a ``BitsandbytesChild``) take
    theirs under their names.

    Returns name -> list of per-round medians (seconds); blocks are sized from
    the first contender's speed.
    """
    steps = list(contenders.values())
    for fn in steps:
        fn()  # warm: compilation, page faults
    calls = calls_per_block(steps[0])
    # name -> function of the block's call count, returning its median seconds
    turns = [(name, lambda c, fn=fn: block(fn, c)) for name, fn in contenders.items()]
    if torch:
        turns.append(("torch", torch.time))
    turns += [(name, child.time) for name, child in (children or {}).items()]
    out = {name: [] for name, _ in turns}
    for r in range(rounds):
        k = r % len(turns)
        for name, timed in turns[k:] + turns[:k]:
            out[name].append(timed(calls))
    return out


def ratio(times, num, den):
    """Median over rounds of ``times[num] / times[den]``: a ratio measured side by side."""
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def batch_time(step, wait, repeats, batch):
    """Median over ``repeats`` batches of the wall time per step of ``batch``
    back-to-back launches (launch costs overlap the GPU's work, as in training)."""
    step()
    wait()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batch):
            step()
        wait()
        times.append((time.perf_counter() - t0) / batch)
    return statistics.median(times)
