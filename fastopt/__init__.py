"""fastopt: fused, JIT-compiled optimizer updates for NumPy arrays.

SGD, Adagrad, Adam and AdamW with ``torch.optim``'s rules, names and state
dicts; each step is one pass over memory, serial or parallel by size.
"""

from . import config, functional
from .checkpoint import CheckpointError, load, save
from .flat import FlatParams, FlatSegment
from .optimizers import SGD, Adagrad, Adam, AdamW, Optimizer

__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "FlatParams", "FlatSegment",
           "save", "load", "CheckpointError", "config", "functional"]
__version__ = "0.1.0"
