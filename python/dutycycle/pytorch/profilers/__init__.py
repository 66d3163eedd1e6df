"""lightning.pytorch.profilers: Profiler, PassThroughProfiler, SimpleProfiler, AdvancedProfiler
(dutycycle.trainer.profiler's; Trainer(profiler="simple") builds the same classes)."""

from ..._missing import missing_names
from ...trainer.profiler import AdvancedProfiler, PassThroughProfiler, Profiler, SimpleProfiler

__all__ = ["Profiler", "PassThroughProfiler", "SimpleProfiler", "AdvancedProfiler"]

__getattr__ = missing_names(
    __name__, "lightning.pytorch.profilers", {"PyTorchProfiler": "it needs torch.profiler; use SimpleProfiler"}
)
