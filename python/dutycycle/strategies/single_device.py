"""SingleDeviceStrategy: one process, one device — what Trainer(strategy="auto") runs today."""

from __future__ import annotations

import dutycycle as dc

from .strategy import Strategy


class SingleDeviceStrategy(Strategy):
    """Train on `device` ('cpu', 'cuda', 'cuda:0' or a dutycycle.device) in this process.

    Everything the base class does for one process, plus the device. Subclass it to watch or
    change one piece (e.g. override `optimizer_step` and call super())."""

    strategy_name = "single_device"

    def __init__(self, device="cpu"):
        super().__init__()
        dev = device if isinstance(device, dc.device) else dc.device(device)
        if dev.type == "cuda" and not dc.cuda.is_available():
            raise RuntimeError(
                f"SingleDeviceStrategy(device={device!r}): no CUDA device is available "
                f"(dutycycle.cuda.is_built()={dc.cuda.is_built()}, device_count()={dc.cuda.device_count()})"
            )
        self._root_device = dev

    @property
    def root_device(self):
        return self._root_device
