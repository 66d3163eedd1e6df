"""Rank-zero-only helpers with Lightning's semantics (lightning.pytorch.utilities.rank_zero).

`rank_zero_only.rank` is this process's global rank: read from the launcher's environment at
import (so it is right before any process group exists) and set again by init_process_group and
the distributed strategies. A decorated function runs on rank 0 and returns `default` elsewhere."""

from __future__ import annotations

import functools
import logging
import warnings

from ._env import launcher_env

log = logging.getLogger("dutycycle")


def _env_rank():
    try:
        return launcher_env()["rank"]
    except ValueError:
        return 0


def rank_zero_only(fn=None, default=None):
    """Decorator: call fn only on global rank 0 (`rank_zero_only.rank`); other ranks get `default`.

        @rank_zero_only
        def save(...): ...
        rank_zero_only(fn, default=0)   # as in Lightning
    """
    if fn is None:
        return functools.partial(rank_zero_only, default=default)

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        rank = getattr(rank_zero_only, "rank", None)
        if rank is None:
            raise RuntimeError("The `rank_zero_only.rank` needs to be set before use")
        if rank == 0:
            return fn(*args, **kwargs)
        return default

    return wrapped


rank_zero_only.rank = _env_rank()


@rank_zero_only
def rank_zero_info(*args, stacklevel=3, **kwargs):
    """logging.info on rank 0 only (the "dutycycle" logger)."""
    log.info(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_debug(*args, stacklevel=3, **kwargs):
    log.debug(*args, stacklevel=stacklevel, **kwargs)


@rank_zero_only
def rank_zero_warn(message, category=UserWarning, stacklevel=3, **kwargs):
    """warnings.warn on rank 0 only (reported at the caller's line)."""
    warnings.warn(message, category, stacklevel=stacklevel, **kwargs)



@rank_zero_only
def rank_zero_deprecation(message, stacklevel=4, **kwargs):
    """A DeprecationWarning on rank 0 only (Lightning's rank_zero_deprecation)."""
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel, **kwargs)
