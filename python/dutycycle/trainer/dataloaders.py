"""Which dataloader each stage runs and how many of its batches: the dataloaders passed to the
entry point, else the datamodule's, else the LightningModule's `*_dataloader()`; limit_*_batches
as a count or a fraction; the batch at which validation runs inside an epoch (val_check_batch).
With a multi-process strategy (world_size > 1) and use_distributed_sampler=True, every
DataLoader with a plain sampler is rebuilt with a DistributedSampler (Lightning's behaviour):
shuffled loaders get shuffle=True with the seed of seed_everything (PL_GLOBAL_SEED, the same on
every rank), the others shuffle=False; each rank then sees its disjoint, equally long share.
"""

from __future__ import annotations

import os
import warnings


def source(trainer, kind):
    """The dataloader(s) for kind (with a DistributedSampler when the run has several ranks)."""
    loaders = _source(trainer, kind)
    if kind in ("train", "val") and trainer.overfit_batches > 0 and trainer.state.fn == "fit":
        loaders = _sequential(loaders, kind)
    return distribute(trainer, loaders, kind)


def _sequential(loaders, kind):
    """overfit_batches (Lightning's _resolve_overfit_batches): shuffling off, so each epoch trains
    on (and validates with) the same first batches."""
    from ..data import BatchSampler, DataLoader, IterableDataset, SequentialSampler

    if loaders is None:
        return None
    many = isinstance(loaders, (list, tuple))
    out = []
    for dl in loaders if many else [loaders]:
        if (
            isinstance(dl, DataLoader)
            and not isinstance(dl.dataset, IterableDataset)
            and type(dl.batch_sampler) is BatchSampler  # a custom batch_sampler is the user's business
            and not isinstance(dl.sampler, SequentialSampler)
        ):
            prefix = "training" if kind == "train" else kind
            warnings.warn(
                f"You requested to overfit but enabled {prefix} dataloader shuffling. We are turning off the "
                f"{prefix} dataloader shuffling for you.",
                stacklevel=4,
            )
            dl = _rebuilt(dl, SequentialSampler(dl.dataset))
        out.append(dl)
    return type(loaders)(out) if many else out[0]


def _rebuilt(loader, sampler):
    """loader's DataLoader with another sampler, everything else as it was."""
    from ..data import DataLoader

    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        drop_last=loader.drop_last,
        prefetch_factor=loader.prefetch_factor,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
    )


def distribute(trainer, loaders, kind):
    """loaders (one, a list/tuple, or None) with their samplers replaced by DistributedSamplers
    when the strategy runs several processes; unchanged otherwise."""
    strategy = trainer.strategy
    if loaders is None or not trainer.config.use_distributed_sampler or strategy.world_size <= 1:
        return loaders
    if isinstance(loaders, (list, tuple)):
        return type(loaders)(_with_distributed_sampler(trainer, dl, kind) for dl in loaders)
    return _with_distributed_sampler(trainer, loaders, kind)


def _with_distributed_sampler(trainer, loader, kind):
    from ..data import BatchSampler, DataLoader, DistributedSampler, IterableDataset, RandomSampler, SequentialSampler

    if not isinstance(loader, DataLoader) or isinstance(loader.dataset, IterableDataset):
        return loader  # an IterableDataset shards itself (get_worker_info / the rank), as in Lightning
    if isinstance(loader.sampler, DistributedSampler):
        return loader
    if loader.batch_sampler is not None and type(loader.batch_sampler) is not BatchSampler:
        warnings.warn(
            f"the {kind} DataLoader has a custom batch_sampler ({type(loader.batch_sampler).__name__}); it is used as "
            "is on every rank, so make it shard by rank itself (or pass use_distributed_sampler=False)",
            stacklevel=3,
        )
        return loader
    if type(loader.sampler) not in (RandomSampler, SequentialSampler):
        warnings.warn(
            f"the {kind} DataLoader has a custom sampler ({type(loader.sampler).__name__}); it is used as is on every "
            "rank, so each rank sees the same samples (wrap it in a DistributedSampler yourself)",
            stacklevel=3,
        )
        return loader
    shuffle = kind == "train" and isinstance(loader.sampler, RandomSampler)
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    if shuffle and loader.sampler.seed is not None:
        seed = loader.sampler.seed
    kwargs = trainer.strategy.distributed_sampler_kwargs
    sampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed, **kwargs)
    return _rebuilt(loader, sampler)


def _source(trainer, kind):
    """The dataloader(s) for kind: passed to the entry point, else the datamodule's, else the module's."""
    passed = {
        "train": trainer.__dict__.get("_train_source"),
        "val": trainer.__dict__.get("_val_source"),
        "test": trainer.__dict__.get("_test_source"),
        "predict": trainer.__dict__.get("_predict_source"),
    }[kind]
    if passed is not None:
        return passed
    for owner in (trainer.datamodule, trainer.lightning_module):
        fn = getattr(owner, f"{kind}_dataloader", None) if owner is not None else None
        if fn is not None and callable(fn):
            try:
                return fn()
            except NotImplementedError:  # LightningModule's default *_dataloader(): "none defined here"
                continue
    return None

def val_source_exists(trainer):
    if trainer.__dict__.get("_val_source") is not None:
        return True
    owners = (trainer.datamodule, trainer.lightning_module)
    return any(owner is not None and hasattr(owner, "val_dataloader") for owner in owners)

def has_step(m, name):
    return callable(getattr(m, name, None))

def num_batches(loader, limit, name):
    try:
        n = len(loader)
    except TypeError:
        n = float("inf")
    if isinstance(limit, int):
        return min(n, limit)
    if limit == 1.0:
        return n
    if n == float("inf"):
        if limit == 0.0:
            return 0
        raise ValueError(f"{name}={limit} as a fraction needs a dataloader with a length; pass an int instead")
    k = int(n * limit)
    if k == 0 and limit > 0.0:
        raise ValueError(
            f"You requested to check {limit} of the {name.split('_')[1]} dataloader but "
            f"{limit} * {n} < 1; use a larger fraction or an int"
        )
    return k

def setup_train_data(trainer):
    loader = source(trainer, "train")
    if loader is None:
        raise ValueError(
            "No `train_dataloader()` method defined and no `train_dataloaders` passed to `Trainer.fit`"
        )
    trainer.train_dataloader = loader
    n = num_batches(loader, trainer.limit_train_batches, "limit_train_batches")
    trainer.num_training_batches = n
    vci = trainer.val_check_interval
    if isinstance(vci, int):
        if trainer.check_val_every_n_epoch is not None and n != float("inf") and vci > n:
            raise ValueError(
                f"`val_check_interval` ({vci}) must be less than or equal to the number of the training "
                f"batches ({n}). If you want to disable validation set `limit_val_batches` to 0.0 instead. If "
                "you want to validate based on the total training batches, set `check_val_every_n_epoch=None`."
            )
        trainer.val_check_batch = vci
    elif n == float("inf"):
        trainer.val_check_batch = float("inf")
    else:
        trainer.val_check_batch = max(1, int(n * vci))

def as_list(loaders):
    if loaders is None:
        return []
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]
