"""torch.backends.cuda: cuBLAS matmul switches (``matmul.allow_tf32``, ``matmul.fp32_precision``,
``matmul.allow_fp16_reduced_precision_reduction``, ...) and the scaled-dot-product-attention kernel
switches. Stored for the CUDA backend; the CPU backend's results do not depend on them."""

from contextlib import contextmanager

from .. import cuda as _cuda
from .._missing import missing_names
from . import _flags

_FP32_PRECISIONS = ("none", "ieee", "tf32")


class _Matmul(_flags.FlagsObject):
    _owner = "torch.backends.cuda.matmul"
    _kinds = {"allow_fp16_reduced_precision_reduction": bool, "allow_bf16_reduced_precision_reduction": bool,
              "allow_fp16_accumulation": bool}

    # allow_tf32 and fp32_precision are views of the one float32 matmul precision (_flags).
    @property
    def allow_tf32(self):
        return _flags.get_float32_matmul_precision() != "highest"

    @allow_tf32.setter
    def allow_tf32(self, value):
        _flags.check_bool(self._owner, "allow_tf32", value)
        _flags.set_float32_matmul_precision("high" if value else "highest")

    @property
    def fp32_precision(self):
        return "tf32" if self.allow_tf32 else "ieee"

    @fp32_precision.setter
    def fp32_precision(self, value):
        if value not in _FP32_PRECISIONS:
            raise ValueError(f"{self._owner}.fp32_precision must be one of {_FP32_PRECISIONS}, got {value!r}")
        _flags.set_float32_matmul_precision("high" if value == "tf32" else "highest")

    def __repr__(self):
        return super().__repr__()[:-1] + f", allow_tf32={self.allow_tf32!r}, fp32_precision={self.fp32_precision!r}>"

    def __setattr__(self, name, value):
        if isinstance(getattr(type(self), name, None), property):
            object.__setattr__(self, name, value)  # goes through the property's setter
        else:
            super().__setattr__(name, value)


matmul = _Matmul(allow_fp16_reduced_precision_reduction=True, allow_bf16_reduced_precision_reduction=True,
                 allow_fp16_accumulation=False)

_sdp = {"flash": True, "mem_efficient": True, "math": True, "cudnn": True}


def is_built():
    """True when this build has the CUDA kernels (as dutycycle.cuda.is_built())."""
    return _cuda.is_built()


def _enable(kind):
    def enable(enabled):
        _sdp[kind] = _flags.check_bool("torch.backends.cuda", f"enable_{kind}_sdp", enabled)

    enable.__name__ = f"enable_{kind}_sdp"
    enable.__doc__ = f"Allow (or forbid) the {kind} attention kernel for scaled_dot_product_attention on CUDA."
    return enable


def _enabled(kind):
    def enabled():
        return _sdp[kind]

    enabled.__name__ = f"{kind}_sdp_enabled"
    return enabled


enable_flash_sdp, flash_sdp_enabled = _enable("flash"), _enabled("flash")
enable_mem_efficient_sdp, mem_efficient_sdp_enabled = _enable("mem_efficient"), _enabled("mem_efficient")
enable_math_sdp, math_sdp_enabled = _enable("math"), _enabled("math")
enable_cudnn_sdp, cudnn_sdp_enabled = _enable("cudnn"), _enabled("cudnn")


@contextmanager
def sdp_kernel(enable_flash=True, enable_math=True, enable_mem_efficient=True, enable_cudnn=True):
    """The attention-kernel switches for the duration of a with block (torch's deprecated context)."""
    saved = dict(_sdp)
    _sdp.update(flash=bool(enable_flash), math=bool(enable_math), mem_efficient=bool(enable_mem_efficient),
                cudnn=bool(enable_cudnn))
    try:
        yield
    finally:
        _sdp.update(saved)


__getattr__ = missing_names(__name__, "torch.backends.cuda")
