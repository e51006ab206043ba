"""Reduced-precision state on the CUDA target, without a GPU.

Under the CUDA simulator (in a subprocess: it must be chosen before numba.cuda
is imported), every coded kernel gives the CPU kernel's results bit for bit
on tiny launches that exercise the grid-stride loop over blocks (and so do
the kernels of bfloat16 parameters, with stochastic rounding too), and an
optimizer with GPU parameters and int8 state matches the CPU one. The PTX of
every kernel is checked by ``tests/test_cuda.py``.
"""

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(importlib.util.find_spec("numba_cuda") is None,
                                reason="numba-cuda is not installed")

_SCRIPT = textwrap.dedent(r"""
    import numpy as np
    from numba import cuda
    from fastopt.kernels import codecs, cpu, spec
    from fastopt.kernels import cuda as K

    rng = np.random.default_rng(0)
    T = np.float32
    SCALARS = {
        "sgd": dict(inv_scale=T(1), neg_lr=T(-0.05), weight_decay=T(0.01), momentum=T(0.9),
                    one_minus_dampening=T(0.9), maximize=False, use_weight_decay=True,
                    use_momentum=True, first_step=False, nesterov=True),
        "adagrad": dict(inv_scale=T(0.5), neg_clr=T(-0.05), weight_decay=T(0.01), eps=T(1e-10),
                        maximize=True, use_weight_decay=True),
        "adam": dict(inv_scale=T(1), lerp_weight=T(0.1), lerp_weight_complement=T(0.9),
                     beta2=T(0.999), one_minus_beta2=T(0.001), neg_step_size=T(-0.01),
                     bias_correction2_sqrt=T(0.0316), eps=T(1e-8), weight_decay=T(0.01),
                     decay_factor=T(1), maximize=False, l2_decay=True,
                     amsgrad=True, lerp_from_end=False),
    }
    checked = 0

    def same(name, args, launch):
        # The CUDA kernel on ``launch`` (blocks, threads) writes the serial
        # CPU loop's bits into every array.
        global checked
        host = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        cpu.KERNELS[name]["serial"](*host)
        dev = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
        K.ALL[name][launch](*dev)
        for k, (h, d) in enumerate(zip(host, dev)):
            if isinstance(h, np.ndarray):
                assert np.array_equal(d.copy_to_host().view(np.uint8), h.view(np.uint8)), (name, k)
        checked += 1

    for rule, coded in spec.CODED_STATE.items():
        for codec in spec.CODECS:
            name = f"{rule}_{codec}"
            n = 301 if codec == "int4" else 300
            values = {"p": rng.standard_normal(n).astype(T), "g": rng.standard_normal(n).astype(T)}
            for a, sign in coded.items():
                x = rng.standard_normal(n).astype(T)
                x = x if sign == "signed" else x * x
                if codec == "bf16":
                    bits = np.empty(n, np.uint16)
                    for i in range(n):
                        bits[i] = codecs.bf16_encode(x[i])
                    values[a] = bits
                else:
                    from fastopt import _state_dtype as D
                    p = np.zeros(n, T)
                    key = {"buf": "momentum_buffer", "state_sum": "sum"}.get(a, a)
                    stored = D.encode(codec, key, x, p)
                    values[a], values[a + "_absmax"] = stored[key], stored[key + "_absmax"]
            if codec != "bf16":
                values["qmaps"], values["qluts"] = codecs.tables(codec)
            same(name, spec.pack[name](**values, **SCALARS[rule]), (2, 1))  # each thread: blocks

    # bfloat16 parameters, rounded to nearest and stochastically: the random
    # bits follow the element's index, not the thread.
    n = 37
    for rule in spec.CODED_STATE:
        for params in ("p16", "p16m"):
            for stochastic in (False, True):
                name = f"{rule}_{params}"
                values = {a: np.abs(rng.standard_normal(n)).astype(T)
                          for a in spec.KERNELS[name].of_kind(spec.ARRAY)}
                values.update({a: (rng.standard_normal(n).astype(T).view(np.uint32) >> 16)
                               .astype(np.uint16) for a in ("p", "g")})
                if params == "p16m":
                    values["master"] = rng.standard_normal(n).astype(T)
                same(name, spec.pack[name](**values, **SCALARS[rule], seed=np.uint32(99),
                                           stochastic=stochastic), (2, 4))

    # An optimizer with GPU parameters and int8 state, against the CPU one.
    import fastopt
    n = 4096 + 300
    p0 = rng.standard_normal(n).astype(T)
    grads = [rng.standard_normal(n).astype(T) for _ in range(2)]
    host_p = p0.copy()
    ref = fastopt.AdamW([host_p], state_dtype="int8", target="serial")
    dev_p = cuda.to_device(p0)
    opt = fastopt.AdamW([dev_p], state_dtype="int8")
    for g in grads:
        ref.step([g])
        opt.step([cuda.to_device(g)])
    assert np.array_equal(dev_p.copy_to_host(), host_p)
    sd = opt.state_dict(to_host=True)["state"][0]
    assert np.array_equal(sd["exp_avg"], ref.state[0]["exp_avg"])
    assert np.array_equal(sd["exp_avg_sq_absmax"], ref.state[0]["exp_avg_sq_absmax"])
    print("checked", checked)
""")


def test_coded_kernels_match_cpu_under_the_simulator():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=ROOT, text=True,
                            capture_output=True, timeout=600,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1",
                                 "FASTOPT_CUDA_THREADS_PER_BLOCK": "8",
                                 "FASTOPT_CUDA_MAX_BLOCKS": "2"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    assert "checked 21" in result.stdout
