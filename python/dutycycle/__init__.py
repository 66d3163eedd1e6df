"""dutycycle: train large generative models on many GPUs without leaving them idle.

The tensor engine (tensors, autograd, kernels) is the C extension ``dutycycle._C``; this package
gives it a PyTorch-like face, so ``import dutycycle as torch`` works for the subset it has."""

from ._platform import load_core

_C = load_core()  # first: picks the BLAS kernels before the C core's BLAS initialises

from ._C import (
    AutogradError,
    CollectiveTimeoutError,
    CudaError,
    DataFormatError,
    DataIOError,
    DesyncError,
    DeviceError,
    DistributedError,
    DTypeError,
    DutycycleError,
    IndexError_,
    ShapeError,
    UnsupportedError,
)
from ._dtype import bfloat16, bool_, device, dtype, float16, float32, float64, int8, int16, int32, int64, uint8
from ._tensor import Tensor, where
from ._tensor import (  # torch's legacy constructors
    BFloat16Tensor,
    BoolTensor,
    ByteTensor,
    CharTensor,
    DoubleTensor,
    FloatTensor,
    HalfTensor,
    IntTensor,
    LongTensor,
    ShortTensor,
)
from ._functions import *
from ._functions import (
    arange,
    as_tensor,
    cat,
    empty,
    from_dlpack,
    from_numpy,
    full,
    get_default_dtype,
    get_rng_state,
    initial_seed,
    manual_seed,
    ones,
    rand,
    randint,
    randn,
    set_default_dtype,
    set_rng_state,
    stack,
    tensor,
    zeros,
)
from . import autograd, cuda
from .autograd import enable_grad, inference_mode, is_grad_enabled, no_grad, set_grad_enabled

bool = bool_  # dutycycle.bool, as torch.bool
float = float32
double = float64
half = float16
int = int32
long = int64
short = int16

from . import models, nn, optim  # they build on everything above
from . import callbacks, data, loggers, utils  # the trainer's parts
from .trainer import LightningDataModule, LightningModule, Trainer, seed_everything
from . import strategies  # after the trainer: Trainer(strategy=...) and dutycycle.strategies.Strategy
from . import distributed
from .callbacks import Callback  # lightning's top level: L.Callback

# lightning.pytorch as dutycycle.pytorch (README "PyTorch and Lightning coverage"); its utilities and
# profilers also as dutycycle.utilities / .profilers, for `import pytorch_lightning as pl` -> `import dutycycle as pl`
from . import pytorch
from .pytorch import profilers, utilities

pytorch._alias("utilities", utilities, __name__)
pytorch._alias("profilers", profilers, __name__)

# PyTorch names scripts import around the model (README "PyTorch names")
from . import accelerator, amp, backends
from .amp import autocast, get_autocast_dtype, is_autocast_enabled
from ._torch_names import compile, get_float32_matmul_precision, get_num_threads, seed
from ._torch_names import set_float32_matmul_precision, set_num_threads
from ._torch_names import seed_fresh_at_import as _seed_fresh_at_import

_seed_fresh_at_import()  # a fresh seed per process, as torch (manual_seed makes runs reproducible)

__version__ = "0.1.0"

from ._missing import missing_names as _missing_names

__getattr__ = _missing_names(__name__, "torch")
