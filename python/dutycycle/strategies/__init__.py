"""dutycycle.strategies: how the Trainer runs a step on its device(s) (Lightning's strategies).

A strategy owns what changes when training goes from one device to many: where the model lives
(`root_device`), who this process is (`global_rank`, `world_size`, ...), how the loss goes
backward and the optimizer steps, how processes agree (`reduce`, `broadcast`, `barrier`) and
who writes checkpoints. The Trainer calls it from one place per concern: `backward` from
`Trainer._backward`, `optimizer_step` from every optimizer step (automatic or manual), and
`save_checkpoint` / `load_checkpoint` / `remove_checkpoint` for every checkpoint file.

    Trainer(strategy="auto")                          # = "single_device" in this build
    Trainer(strategy=SingleDeviceStrategy("cpu"))     # or your subclass of it
    Trainer(strategy="ddp", devices=4)                # 4 ranks (self-launched, or under a launcher)
    Trainer(strategy=DDPStrategy(bucket_cap_mb=50, find_unused_parameters=True), devices=4)

Multi-process strategies derive from ParallelStrategy (parallel.py; its docstring lists the
subclass API). `from_name(name)` builds the strategy a name in STRATEGIES stands for.
"""

import importlib
import inspect

from .ddp import DDPStrategy
from .parallel import ParallelStrategy
from .single_device import SingleDeviceStrategy
from .strategy import REDUCE_OPS, Strategy

# Strategy names Trainer(strategy=...) accepts -> what they run.
STRATEGIES = {
    "auto": "one process, one device",
    "single_device": "one process, one device",
    "ddp": "data parallel: bucketed gradient all-reduce overlapped with backward",
    "ddp_find_unused_parameters_true": "= DDPStrategy(find_unused_parameters=True) (Lightning's name)",
    "zero1": "ZeRO stage 1: optimizer state sharded across ranks",
    "zero2": "ZeRO stage 2: optimizer state and gradients sharded across ranks",
    "deepspeed_stage_1": "= zero1 (Lightning's name)",
    "deepspeed_stage_2": "= zero2 (Lightning's name)",
    "parameter_server": "the naive baseline: rank 0 averages, steps and sends parameters back",
}

# name -> (module in this package, class name, keyword arguments)
_FACTORIES = {
    "ddp": (".ddp", "DDPStrategy", {}),
    "ddp_find_unused_parameters_true": (".ddp", "DDPStrategy", {"find_unused_parameters": True}),
    "zero1": (".zero", "ZeroStrategy", {"stage": 1}),
    "zero2": (".zero", "ZeroStrategy", {"stage": 2}),
    "deepspeed_stage_1": (".zero", "ZeroStrategy", {"stage": 1}),
    "deepspeed_stage_2": (".zero", "ZeroStrategy", {"stage": 2}),
    "parameter_server": (".parameter_server", "ParameterServerStrategy", {}),
}


def from_name(name, **kwargs):
    """The strategy instance for a name of STRATEGIES other than "auto"/"single_device"."""
    if name not in _FACTORIES:
        raise ValueError(f"strategy={name!r} is not known; known strategies: {sorted(STRATEGIES)}")
    mod_name, cls_name, defaults = _FACTORIES[name]
    try:
        mod = importlib.import_module(mod_name, __name__)
    except ModuleNotFoundError as e:
        raise ValueError(
            f"strategy={name!r} is not available in this build: dutycycle.strategies{mod_name} is missing ({e})"
        ) from None
    cls = getattr(mod, cls_name, None)
    if cls is None:
        raise ValueError(f"strategy={name!r}: dutycycle.strategies{mod_name} has no {cls_name}")
    kwargs = {**defaults, **kwargs}
    params = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any and "accelerator" not in params and kwargs.get("accelerator") in (None, "auto", "cpu"):
        kwargs.pop("accelerator", None)  # a CPU-only strategy without the argument
    return cls(**kwargs)


__all__ = [
    "DDPStrategy",
    "ParallelStrategy",
    "REDUCE_OPS",
    "STRATEGIES",
    "SingleDeviceStrategy",
    "Strategy",
    "from_name",
]
