"""Precision plugins: what Trainer(precision=...) changes in a step (Lightning's precision plugins).

- "32-true": nothing.
- "bf16-mixed": training/validation/test/predict steps run under autocast(bfloat16): matmuls in
  bfloat16, softmax/norms/losses in float32 (see dutycycle.amp.autocast_mode). The parameters,
  their gradients and the optimizer state stay float32 (the master weights): the optimizer steps
  float32 weights, exactly as without autocast.
- "16-mixed": the same with float16 and dynamic loss scaling (dutycycle.amp.GradScaler): the loss is
  multiplied by the scale before backward, the gradients are unscaled before clipping, a step whose
  gradients hold inf/NaN is skipped and the scale halves; after growth_interval clean steps it
  doubles. Skipped steps are counted (``skipped_steps``), logged as "precision/skipped_steps" and
  warned about once. Reading the inf/NaN flag is one host sync per optimizer step (as in torch).
- "bf16-true" / "16-true" / "64-true": the whole model in that dtype (Lightning's HalfPrecision and
  DoublePrecision): the LightningModule's floating parameters and buffers are converted at setup
  (before configure_optimizers, so the optimizer holds the converted parameters and keeps its state
  in their dtype), floating tensors of each batch are converted after the transfer hooks, and the
  default dtype is that dtype inside the steps (tensors made there without a dtype get it). The
  optimizer kernels compute each update in float32 and round once into the 16-bit parameters.
  No master weights: small updates can vanish in bfloat16 (use "bf16-mixed" for that).

The scaler's state goes into checkpoints (Lightning's "MixedPrecision" key) and comes back on resume.
"""

from __future__ import annotations

import contextlib
import warnings

import dutycycle as dc

from .module import apply_to_tensors


class Precision:
    """ "32-true": every hook a no-op."""

    name = "32-true"
    scaler = None

    def __init__(self, device_type="cpu"):
        self.device_type = device_type
        self.skipped_steps = 0

    def forward_context(self):
        return contextlib.nullcontext()

    def convert_module(self, module):
        return module

    def convert_input(self, batch):
        return batch

    def pre_backward(self, loss):
        return loss

    def unscale_gradients(self, optimizer):
        pass

    def optimizer_step(self, optimizer, closure, step_fn):
        """Run closure (training_step + backward) and the optimizer step; step_fn(optimizer, closure)
        is the strategy's step."""
        return step_fn(optimizer, closure)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class MixedPrecision(Precision):
    def __init__(self, precision, device_type="cpu", scaler=None):
        super().__init__(device_type)
        self.name = precision
        self.dtype = dc.bfloat16 if precision == "bf16-mixed" else dc.float16
        if precision == "16-mixed":
            self.scaler = scaler if scaler is not None else dc.amp.GradScaler(device=device_type)
        self._warned = False

    def forward_context(self):
        return dc.autocast(self.device_type, dtype=self.dtype)

    def pre_backward(self, loss):
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def unscale_gradients(self, optimizer):
        """Before gradient clipping (the clip threshold is in unscaled units)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer, closure, step_fn):
        if self.scaler is None:
            return step_fn(optimizer, closure)
        # torch's GradScaler takes no closure: run it first (forward + scaled backward + unscale/clip)
        loss = closure() if closure is not None else None
        if self.scaler._state(optimizer)["stage"] == 0:
            self.scaler.unscale_(optimizer)  # note: sync point (the inf/NaN flag is read on the host)
        skipped = self.scaler._state(optimizer)["found_inf"]
        if not skipped:
            step_fn(optimizer, None)
        self.scaler._state(optimizer)["stage"] = 2
        self.scaler.update()
        if skipped:
            self.skipped_steps += 1
            if not self._warned:
                warnings.warn("precision='16-mixed': a step with inf/NaN gradients was skipped and the loss scale "
                              f"backed off to {self.scaler.get_scale():g} (dynamic loss scaling; later skips are "
                              "counted in precision/skipped_steps)", stacklevel=2)
                self._warned = True
        return loss

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state):
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


class TruePrecision(Precision):
    """ "bf16-true", "16-true", "64-true": parameters, inputs and the default dtype in one dtype."""

    _DTYPES = {"bf16-true": "bfloat16", "16-true": "float16", "64-true": "float64"}

    def __init__(self, precision, device_type="cpu"):
        super().__init__(device_type)
        self.name = precision
        self.dtype = getattr(dc, self._DTYPES[precision])

    def convert_module(self, module):
        return module.to(self.dtype)

    def convert_input(self, batch):
        return _convert_floats(batch, self.dtype)

    @contextlib.contextmanager
    def forward_context(self):
        old = dc.get_default_dtype()
        dc.set_default_dtype(self.dtype)
        try:
            yield
        finally:
            dc.set_default_dtype(old)


def _convert_floats(batch, dtype):
    """Floating tensors anywhere in batch converted to dtype; integer tensors (labels, token ids)
    and everything else left as they are."""
    return apply_to_tensors(batch, lambda t: t.to(dtype) if t.dtype.is_floating_point and t.dtype != dtype else t)


def plugin_for(precision, device_type):
    """The plugin for a parsed precision string ("32-true", "bf16-mixed", "16-mixed", "bf16-true",
    "16-true", "64-true")."""
    if precision in ("bf16-mixed", "16-mixed"):
        return MixedPrecision(precision, device_type)
    if precision in TruePrecision._DTYPES:
        return TruePrecision(precision, device_type)
    return Precision(device_type)
