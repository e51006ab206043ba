"""The kernel layer: declarations, generated loops, and the code LLVM makes of them.

- every kernel's parameters are those ``kernels/spec.py`` declares, and the
  generated loop modules are current;
- on several named x86-64 CPUs (AVX2 and AVX-512), compiled for that CPU in
  a subprocess with an explicit signature (nothing runs, so the host's own
  CPU does not matter): LLVM vectorises every loop of every CPU kernel,
  float32 loops never convert to float64, and nothing is contracted into
  fused multiply-adds.
"""

import inspect
import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fastopt import _update
from fastopt._warmup import cpu_loops, dtypes
from fastopt.kernels import rules, spec

ROOT = Path(__file__).resolve().parent.parent

_AVX2 = "+sse,+sse2,+sse3,+ssse3,+sse4.1,+sse4.2,+popcnt,+avx,+avx2,+fma,+f16c,+bmi,+bmi2,+lzcnt,+movbe"
_AVX512 = _AVX2 + ",+avx512f,+avx512cd,+avx512bw,+avx512dq,+avx512vl"
CPUS = {  # NUMBA_CPU_NAME alone keeps the host's features: name them too
    "haswell": _AVX2,
    "znver3": _AVX2 + ",+adx,+aes,+sha,+clflushopt,+clwb",
    "skylake-avx512": _AVX512,
    "znver4": _AVX512 + ",+avx512vbmi,+avx512vnni,+avx512bf16,+avx512ifma,+avx512vpopcntdq",
}
# The loops of bfloat16 parameters (the same integer and float work as the
# others) are probed on one CPU of each instruction set, to keep CI short.
EVERY_LOOP_ON = ("haswell", "znver4")


def _probed(name, cpu):
    """Whether the probe of ``cpu`` compiles loop ``name``."""
    return cpu in EVERY_LOOP_ON or not (name in spec.KERNELS and spec.KERNELS[name].params)


# --- declarations ---------------------------------------------------------------

@pytest.mark.parametrize("target", sorted(spec.GENERATED))
def test_generated_loops_are_current(target):
    assert spec.GENERATED[target].read_text() == spec.generate(target), \
        "run python -m fastopt.kernels.spec after changing a declaration"


@pytest.mark.parametrize("kernel", spec.RULE_KERNELS, ids=lambda k: k.name)
def test_rule_takes_the_declared_arguments(kernel):
    """The loops pass the rule every argument in the declared order: names and order must match."""
    assert tuple(inspect.signature(getattr(rules, kernel.rule_function)).parameters) \
        == kernel.rule_names
    assert set(kernel.updated) <= (set(kernel.of_kind(spec.ARRAY)) | set(kernel.coded)
                                   | set(kernel.of_kind(spec.P16)))
    for array, (flag, stand_in) in kernel.optional.items():
        assert flag in kernel.of_kind(spec.FLAG) and stand_in in kernel.rule_names


def test_every_cpu_loop_takes_the_declared_arguments():
    for name, loop in cpu_loops():
        assert tuple(inspect.signature(loop.py_func).parameters) == spec.KERNELS[name].names, name


def test_arguments_are_packed_by_name_only():
    adagrad = spec.pack["adagrad"]
    values = {name: k for k, name in enumerate(spec.KERNELS["adagrad"].names)}
    assert adagrad(**values) == tuple(range(len(values)))
    with pytest.raises(TypeError):
        adagrad(*values.values())
    with pytest.raises(TypeError):
        adagrad(**{**values, "eps2": 0})
    with pytest.raises(TypeError):
        adagrad(**{k: v for k, v in values.items() if k != "eps"})


def test_unchecked_updates_are_keyword_only():
    for fn in (_update.sgd, _update.adagrad, _update.adam):
        kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}, fn.__name__


@pytest.mark.parametrize("kernel", spec.RULE_KERNELS, ids=lambda k: k.name)
def test_each_scalar_changes_the_result(kernel):
    """Every declared scalar matters under some flags: one the rule ignored (or
    read in another's place) would leave every result unchanged."""
    rule = getattr(rules, kernel.rule_function)
    flags = kernel.of_kind(spec.FLAG)
    base = {**dict.fromkeys(kernel.of_kind(spec.ARRAY) + tuple(kernel.coded)
                            + kernel.of_kind(spec.P16), 0.75),
            **dict.fromkeys(kernel.of_kind(spec.SCALAR), 0.5)}
    settings = [dict(zip(flags, on)) for on in itertools.product([False, True], repeat=len(flags))]
    for name in kernel.of_kind(spec.SCALAR):
        changed = {**base, name: 0.375}
        assert any(rule(**base, **f) != rule(**changed, **f) for f in settings), name


# --- code generation on named CPUs ----------------------------------------------

_PROBE = textwrap.dedent(r"""
    import json, os, re, sys, tempfile
    import llvmlite.binding as llvm
    from numba import njit
    from fastopt._warmup import cpu_loops, dtypes
    from fastopt.kernels import cpu
    from fastopt.kernels.spec import BLOCK_CODECS, KERNELS, signature

    # The norms' kernels run their loop over each chunk of the gradient in a
    # function of their own (their loops only combine the chunks' results, in
    # order): that function is what must vectorise.
    CHUNKED = {"sq_norm": cpu._sq_sum, "max_abs_bits": cpu._max_bits}

    for option in ("-pass-remarks=loop-vectorize", "-pass-remarks-missed=loop-vectorize"):
        llvm.set_option("", option)

    def compile_capturing_remarks(loop, sig):
        # LLVM writes its remarks to file descriptor 2.
        with tempfile.TemporaryFile("w+") as log:
            saved = os.dup(2)
            os.dup2(log.fileno(), 2)
            try:
                options = {k: v for k, v in loop.targetoptions.items() if k != "nopython"}
                fresh = njit(**options)(loop.py_func)  # uncached: its assembly can be read
                fresh.compile(sig)
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            log.seek(0)
            return fresh, log.read()

    every_loop = os.environ["FASTOPT_PROBE_EVERY_LOOP"] == "1"
    problems, checked, serial_vectorised = [], 0, {}
    for name, loop in cpu_loops():
        if not every_loop and name in KERNELS and KERNELS[name].params:
            continue
        parallel = loop.targetoptions.get("parallel")
        for dtype in dtypes(name):
            fresh, remarks = compile_capturing_remarks(CHUNKED.get(name, loop),
                                                       signature(name, dtype))
            asm = "\n".join(fresh.inspect_asm().values())
            where = f"{loop.py_func.__name__}[{dtype}]"
            checked += 1
            if name in KERNELS and KERNELS[name].codec in BLOCK_CODECS:
                # Block-wise state: the map look-ups are gathers LLVM keeps
                # scalar; only precision is checked (no float64, no FMA).
                if dtype == "float32" and re.search(r"\bv?cvt(ss2sd|ps2pd)\b", asm):
                    problems.append(f"{where}: float32 loop converts to float64")
                if re.search(r"\bvfn?m(add|sub)\d*[ps][sd]\b", asm):
                    problems.append(f"{where}: fused multiply-add contraction")
                continue
            vectorised = remarks.count("vectorized loop (")
            if not parallel:
                # Every loop of a serial kernel is the kernel's own: none may be refused.
                serial_vectorised[name, dtype] = vectorised
                if "loop not vectorized" in remarks or not vectorised:
                    problems.append(f"{where}: a loop is not vectorised: "
                                    + " | ".join(l for l in remarks.splitlines() if "remark" in l))
            elif vectorised < serial_vectorised[name, dtype]:
                # numba's scheduling loops around a parallel body do not vectorise;
                # the body's loops must, as many as in the serial kernel.
                problems.append(f"{where}: {vectorised} vectorised loops, the serial kernel "
                                f"has {serial_vectorised[name, dtype]}")
            suffix = "ps" if dtype == "float32" else "pd"
            # max_abs_bits works on the floats' bits: its packed arithmetic is integer.
            packed = (r"\bvp(max|cmpgt)[a-z]+\b" if name == "max_abs_bits"
                      else rf"\bv?(add|sub|mul|div|sqrt){suffix}\b")
            if not re.search(packed, asm):
                problems.append(f"{where}: no packed arithmetic")
            # sq_norm sums float32 squares in float64 on purpose.
            if (dtype == "float32" and name != "sq_norm"
                    and re.search(r"\bv?cvt(ss2sd|ps2pd)\b", asm)):
                problems.append(f"{where}: float32 loop converts to float64")
            if re.search(r"\bvfn?m(add|sub)\d*[ps][sd]\b", asm):
                problems.append(f"{where}: fused multiply-add contraction")
    print(json.dumps({"checked": checked, "problems": problems}))
""")


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """One subprocess per CPU, all started at once (they are single-threaded
    compilations: on two cores, two at a time halve the wall time), each
    compiling every CPU loop for both dtypes."""
    started = {}
    for cpu in CPUS:
        env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": CPUS[cpu],
               "NUMBA_CACHE_DIR": str(tmp_path_factory.mktemp(cpu)),
               "FASTOPT_PROBE_EVERY_LOOP": "1" if cpu in EVERY_LOOP_ON else "0",
               "NUMBA_NUM_THREADS": "1"}
        started[cpu] = subprocess.Popen([sys.executable, "-c", _PROBE], cwd=ROOT, env=env,
                                        text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("cpu", list(CPUS))
def test_every_cpu_loop_vectorises_and_keeps_precision(cpu, probes):
    try:
        out, err = probes[cpu].communicate(timeout=900)
    except subprocess.TimeoutExpired:
        probes[cpu].kill()
        raise
    assert probes[cpu].returncode == 0, err[-4000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["checked"] == sum(len(dtypes(name)) for name, _ in cpu_loops()
                                    if _probed(name, cpu))
    assert not report["problems"], "\n".join(report["problems"])


def test_warmup_compiles_every_loop_for_both_dtypes():
    from fastopt._warmup import warmup
    assert warmup() == sum(len(dtypes(name)) for name, _ in cpu_loops())
    assert all(len(loop.signatures) >= len(dtypes(name)) for name, loop in cpu_loops())
