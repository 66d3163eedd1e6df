"""dutycycle.strategies: how the Trainer runs a step on its device(s) (Lightning's strategies).

A strategy owns what changes when training goes from one device to many: where the model lives
(`root_device`), who this process is (`global_rank`, `world_size`, ...), how the loss goes
backward and the optimizer steps, how processes agree (`reduce`, `broadcast`, `barrier`) and
who writes checkpoints. The Trainer calls it from one place per concern: `backward` from
`Trainer._backward`, `optimizer_step` from every optimizer step (automatic or manual), and
`save_checkpoint` / `load_checkpoint` / `remove_checkpoint` for every checkpoint file.

    Trainer(strategy="auto")                          # = "single_device" in this build
    Trainer(strategy=SingleDeviceStrategy("cpu"))     # or your subclass of it
"""

from .single_device import SingleDeviceStrategy
from .strategy import REDUCE_OPS, Strategy

# Strategy names Trainer(strategy=...) accepts; the distributed issue adds "ddp" and "zero1".
STRATEGIES = {"auto": "one process, one device", "single_device": "one process, one device"}

__all__ = ["REDUCE_OPS", "STRATEGIES", "SingleDeviceStrategy", "Strategy"]
