"""dutycycle.nn: Module, Parameter, layers, functional, init and utils (torch.nn-like)."""

from . import functional, init, utils
from .module import Module
from .modules import (
    GELU,
    Dropout,
    Embedding,
    Identity,
    LayerNorm,
    Linear,
    ModuleDict,
    ModuleList,
    ReLU,
    Sequential,
    SiLU,
    Tanh,
)
from .parameter import Parameter

__all__ = [
    "GELU",
    "Dropout",
    "Embedding",
    "Identity",
    "LayerNorm",
    "Linear",
    "Module",
    "ModuleDict",
    "ModuleList",
    "Parameter",
    "ReLU",
    "Sequential",
    "SiLU",
    "Tanh",
    "functional",
    "init",
    "utils",
]
