"""torch.cuda.amp: autocast and GradScaler with device "cuda" fixed (torch's older spelling of
torch.amp.autocast("cuda", ...) / torch.amp.GradScaler("cuda", ...)). Without a usable GPU an
enabled GradScaler warns and disables itself, as torch's does; see dutycycle.amp."""

from .. import amp as _amp
from .._missing import missing_names


class autocast(_amp.autocast):
    def __init__(self, enabled=True, dtype=None, cache_enabled=True):
        from .. import float16

        super().__init__("cuda", dtype=float16 if dtype is None else dtype, enabled=enabled,
                         cache_enabled=cache_enabled)


class GradScaler(_amp.GradScaler):
    def __init__(self, init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000,
                 enabled=True):
        super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval, enabled)


__all__ = ["GradScaler", "autocast"]

__getattr__ = missing_names(__name__, "torch.cuda.amp")
