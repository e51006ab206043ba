"""Where work can run: the targets a caller may name (``target=``).

"serial" and "parallel" are the CPU loops, "cuda" the GPU kernels; None
(the default everywhere) lets ``_dispatch`` choose by where and how large
the arrays are.
"""

TARGETS = ("serial", "parallel", "cuda")
