"""The child process of ``measure_startup``: how long a fresh process takes to step.

Run as a script (``python _startup_child.py ROOT``), where ROOT is the
folder holding the parent's ``fastopt`` package, so that the child times
the same copy. Prints the milliseconds to import fastopt and to take a
first Adam step on 1,000 float32 (kernels from numba's disk cache).
"""

import sys
import time


def main(root):
    sys.path.insert(0, root)
    t0 = time.perf_counter()
    import numpy as np

    import fastopt
    t1 = time.perf_counter()
    p = np.zeros(1000, np.float32)
    opt = fastopt.Adam([p])
    opt.step([np.ones(1000, np.float32)])
    t2 = time.perf_counter()
    print(f"{(t1 - t0) * 1e3} {(t2 - t1) * 1e3}")


if __name__ == "__main__":
    main(sys.argv[1])
