"""Every ```python block of README.md runs (issue 10, item 16).

The README reads as one session: a block may use names an earlier block
defined (``np``, ``fastopt``), so the blocks run in order in one namespace,
as a reader pasting them in would. A block that
imports a package that is not installed, or that needs a CUDA GPU, is skipped
with the reason. Shell and console blocks are not run.

The README leaves the caller's own code as names marked ``# your code``
(``gradients(w, b, batch)``, ``grad(p)``, ...); ``STAND_INS`` gives each a
small stand-in of the right shape, and a test checks that each one is still
used.
"""

import ast
import importlib.util
import pathlib
import re

import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    """``(section, line, code)`` of each ```python block, ``line`` being the
    README line of the block's first line of code."""
    blocks, section, code, start = [], None, None, 0
    for number, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1):
        if code is not None:
            if line.startswith("```"):
                blocks.append((section, start, "\n".join(code) + "\n"))
                code = None
            else:
                code.append(line)
        elif line.startswith("```python"):
            code, start = [], number + 1
        elif line.startswith("## "):
            section = line[3:].strip()
    assert code is None, "README.md ends inside a code block"
    return blocks


BLOCKS = python_blocks()


def _gradients(w, b, batch):
    return np.full_like(w, 0.1), np.full_like(b, 0.1)


def _grad(p):
    return 2 * p - 1


def _cuda_stand_ins():
    import torch
    from numba import cuda
    return {"grad_w": torch.full((784, 10), 0.1, device="cuda"),
            "g": cuda.to_device(np.full(1_000_000, 0.1))}


# The caller's code in the README, by name. The GPU's are made just before a
# block that uses CUDA runs, only where a GPU is there.
STAND_INS = {
    "batches": range(3),
    "gradients": _gradients,
    "grad": _grad,
    "gw1": np.full((784, 256), 0.1, np.float32),
}
GPU_STAND_INS = ("grad_w", "g")


def uses_cuda(code):
    return re.search(r"""device=["']cuda|from numba import cuda""", code) is not None


def needs(code):
    """Why ``code`` cannot run here, or None."""
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module)
    for module in sorted(modules):
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return f"needs {module}, which is not installed"
    if uses_cuda(code):
        from numba import cuda
        if not cuda.is_available():
            return "needs a CUDA GPU"
        if "torch" in modules:
            import torch
            if not torch.cuda.is_available():
                return "needs a CUDA build of torch"
    return None


def names(code):
    """The names ``code`` reads or binds."""
    return {node.id for node in ast.walk(ast.parse(code)) if isinstance(node, ast.Name)}


def run_block(code, line, namespace):
    if uses_cuda(code):
        namespace.update(_cuda_stand_ins())
    # Pad so that a traceback gives the README's line numbers.
    exec(compile("\n" * (line - 1) + code, str(README), "exec"), namespace)


class Session:
    """One namespace for the whole README; each block runs once, after the
    blocks before it (those that can run here). A test selected alone (``-k``)
    runs the blocks before it first."""

    def __init__(self):
        self.namespace = {"__name__": "readme", **STAND_INS}
        self.next = 0

    def run_through(self, index):
        if index < self.next:       # a rerun of the same test: start afresh
            self.__init__()
        while self.next <= index:
            _, line, code = BLOCKS[self.next]
            self.next += 1
            if needs(code) is None:
                run_block(code, line, self.namespace)


SESSION = Session()


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[f"{section}:line{line}" for section, line, _ in BLOCKS])
def test_readme_block_runs(index):
    section, line, code = BLOCKS[index]
    reason = needs(code)
    if reason:
        pytest.skip(f"README.md line {line} ({section}) {reason}")
    SESSION.run_through(index)


def test_blocks_found():
    assert len(BLOCKS) >= 3
    assert all(code.strip() for _, _, code in BLOCKS)


def test_stand_ins_still_used():
    """A stand-in the README no longer uses would hide nothing, but would go
    stale: keep the list to the names the README leaves to the caller."""
    used = set().union(*(names(code) for _, _, code in BLOCKS))
    assert set(STAND_INS) | set(GPU_STAND_INS) <= used
