"""torch.utils.data.dataloader: the DataLoader and what torch's module also exposes."""

from dutycycle.data.collate import default_collate, default_convert
from dutycycle.data.dataloader import DataLoader, WorkerInfo, get_worker_info

from ..._missing import missing_names

__all__ = ["DataLoader", "WorkerInfo", "default_collate", "default_convert", "get_worker_info"]

__getattr__ = missing_names(__name__, "torch.utils.data.dataloader")
