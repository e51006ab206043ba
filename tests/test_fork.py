"""A process that has run parallel steps forks; the child steps too.

Under GNU OpenMP (numba's omp layer on Linux) numba terminates a forked child
that starts a parallel region, so fastopt steps such a child with the serial
kernels (warning once). Each case runs in a fresh process pinned to one
threading layer: a child killed must not take pytest with it.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from test_robustness import _available_layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# The parent takes two steps, forks, and parent and child each take the last
# two; every result must equal four serial steps bit for bit.
SETUP = """
    import multiprocessing, os, sys, warnings
    import numba, numpy as np
    import fastopt

    n = 70_001  # above the parallel threshold
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
    oracle = p0.copy()
    serial = fastopt.Adam([oracle], lr=1e-2, weight_decay=0.1, target="serial")
    for g in grads:
        serial.step([g])
    fastopt.SGD([np.zeros(n)], lr=1.0, target="parallel").step([np.ones(n)])  # starts the layer
    p = p0.copy()
    opt = fastopt.Adam([p], lr=1e-2, weight_decay=0.1, target=TARGET)
    for g in grads[:2]:
        opt.step([g])

    def finish():
        '''The last two steps; whether they equal the oracle, and how many
        fork warnings they raised.'''
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step([grads[2]], check_finite=True)
            opt.step([grads[3]])
            fastopt.functional.adam(p.copy(), grads[3], np.zeros(n, np.float32),
                                    np.zeros(n, np.float32), step=1, target=TARGET)
        forked = sum("forked" in str(w.message) for w in caught)
        return bool((p == oracle).all()), forked
"""

# Once with os.fork, once with a multiprocessing pool started by fork.
CHILDREN = """
    def work(_):
        return finish()

    if __name__ == "__main__":
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.write(w, repr(finish()).encode())
            finally:
                os._exit(0)
        os.close(w)
        child = os.read(r, 1000).decode()
        _, status = os.waitpid(pid, 0)
        with multiprocessing.get_context("fork").Pool(2) as pool:
            pooled = pool.map_async(work, range(2)).get(timeout=120)  # a killed worker: no answer
        print(numba.threading_layer(), status, child, *pooled, finish(), sep="|")
"""


def run_layer(layer, target, body):
    code = textwrap.dedent(SETUP).replace("TARGET", repr(target)) + textwrap.dedent(body)
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer,
           "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("target", ["parallel", None])
@pytest.mark.parametrize("layer", _available_layers())
def test_children_step_after_parent_ran_parallel(layer, target):
    used, status, *children, parent = run_layer(layer, target, CHILDREN).strip().split("|")
    assert used == layer
    assert status == "0"
    # each child equals the oracle, and warns once where it cannot run parallel
    assert children == [f"(True, {int(layer == 'omp')})"] * 3
    assert parent == "(True, 0)"


def test_a_grandchild_steps_too():
    body = """
        pid = os.fork()
        if pid == 0:
            grand = os.fork()
            if grand == 0:
                os._exit(0 if finish()[0] else 3)
            os._exit(0 if os.waitpid(grand, 0)[1] == 0 else 4)  # 4: killed
        print(os.waitpid(pid, 0)[1])
    """
    layer = "omp" if "omp" in _available_layers() else "workqueue"
    assert run_layer(layer, "parallel", body).strip() == "0"


def _run(code, timeout=120):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def test_child_forked_while_another_thread_steps_is_not_locked_out():
    """The parent's stepping thread held the optimizer's lock at the fork;
    the child's copy must not wait for a thread it does not have."""
    out = _run("""
        import os, threading, time, numpy as np, fastopt
        p = np.zeros(200_000, np.float32); g = np.ones_like(p)
        opt = fastopt.SGD([p], lr=1e-3, target="serial")
        stop, steps = threading.Event(), [0]
        def loop():
            while not stop.is_set():
                opt.step([g])
                steps[0] += 1
        opt.step([g])  # kernels loaded (numba's own compile lock is not fastopt's to reset)
        t = threading.Thread(target=loop, daemon=True); t.start()
        while steps[0] < 50:
            time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            import signal; signal.alarm(20)
            opt.state_dict(); opt.step([g])
            os._exit(0)
        stop.set()
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    assert "child 0" in out.stdout, out.stdout + out.stderr


def test_child_of_a_process_running_torchs_openmp_steps_serially():
    """PyTorch's GNU OpenMP threads (not numba's) make numba's omp layer hang
    in a forked child: the child runs the serial kernels."""
    pytest.importorskip("torch")
    out = _run("""
        import os, warnings, numpy as np, torch, fastopt
        torch.randn(500, 500) @ torch.randn(500, 500)  # torch's OpenMP threads start
        pid = os.fork()
        if pid == 0:
            import signal; signal.alarm(60)
            p = np.zeros(1 << 20, np.float32)
            opt = fastopt.SGD([p], lr=1.0, target="parallel")
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                for _ in range(3):
                    opt.step([np.ones_like(p)])
            ok = bool((p == -3).all()) and any("GNU OpenMP" in str(w.message) for w in seen)
            os._exit(0 if ok else 3)
        print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """, timeout=180)
    assert "child 0" in out.stdout, out.stdout + out.stderr


def test_a_workqueue_child_stays_parallel_after_the_parent_ran_gnu_openmp():
    # PyTorch's GNU OpenMP threads in the parent sent every child to the
    # serial kernels, with a warning to use the workqueue layer, under that layer
    pytest.importorskip("torch")
    code = textwrap.dedent("""
        import os, warnings, numpy as np, torch, fastopt
        p = np.zeros(1 << 17, np.float32)
        opt = fastopt.SGD([p], lr=1.0, target="parallel"); opt.step([np.ones_like(p)])
        torch.randn(300, 300) @ torch.randn(300, 300)
        pid = os.fork()
        if pid == 0:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                opt.step([np.ones_like(p)])
            os._exit(10 + len([w for w in seen if "forked" in str(w.message)]))
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    env = {**os.environ, "NUMBA_THREADING_LAYER": "workqueue"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "10"  # no warning in the child


def test_a_child_forked_while_a_thread_flattens_can_flatten():
    # flatten_'s lock, held by the parent's thread at the fork, was never
    # released in the child: its flatten_ hung
    pytest.importorskip("torch")
    code = textwrap.dedent("""
        import os, threading, torch
        import fastopt.torch as FT
        held, release = threading.Event(), threading.Event()
        def hold():
            with FT._flat_lock:
                held.set(); release.wait()
        t = threading.Thread(target=hold); t.start(); held.wait()
        pid = os.fork()
        if pid == 0:
            import signal; signal.alarm(60)
            FT.flatten_(torch.nn.Linear(2, 2))
            os._exit(7)
        release.set(); t.join()
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "7"
