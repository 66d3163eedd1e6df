"""dutycycle: train large generative models on many GPUs without leaving them idle.

The tensor engine (tensors, autograd, kernels) is the C extension ``dutycycle._C``; this package
gives it a PyTorch-like face, so ``import dutycycle as torch`` works for the subset it has."""

from ._platform import load_core

_C = load_core()
from ._C import (AutogradError, CudaError, DeviceError, DTypeError, DutycycleError, IndexError_,  # noqa: F401
                 ShapeError, UnsupportedError)
from ._dtype import (bfloat16, bool_, device, dtype, float16, float32, float64, int32, int64)  # noqa: F401
from ._tensor import Tensor, where  # noqa: F401
from ._functions import *  # noqa: F401,F403
from ._functions import (arange, as_tensor, cat, empty, from_dlpack, from_numpy, full, get_default_dtype,  # noqa: F401
                         get_rng_state, initial_seed, manual_seed, ones, rand, randint, randn, set_default_dtype,
                         set_rng_state, stack, tensor, zeros)
from . import autograd  # noqa: F401
from .autograd import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled  # noqa: F401
from . import cuda  # noqa: F401

bool = bool_  # noqa: A001  (dutycycle.bool, as torch.bool)
float = float32  # noqa: A001
double = float64
half = float16
int = int32  # noqa: A001
long = int64

from . import nn  # noqa: E402,F401
from . import optim  # noqa: E402,F401
from . import models  # noqa: E402,F401

__version__ = "0.1.0"
