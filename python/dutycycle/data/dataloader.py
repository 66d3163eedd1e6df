"""DataLoader: batches from a dataset, assembled ahead of the training step.

Same arguments and meaning as torch.utils.data.DataLoader, except what a worker is. Here
``num_workers`` is the number of C threads (csrc/loader/) that build batches while the step
runs, with the GIL released; no processes, nothing pickled. Three ways a batch gets made:

  num_workers == 0   everything in the calling thread: indices from the sampler, items from
                     ``dataset[i]``, then ``collate_fn(items)``. (Column datasets, see below, take
                     their rows with one index_select per column instead of one item at a time;
                     the batch is the same.)
  column fast path   num_workers > 0, default collation, and a dataset that is a TensorDataset of
                     CPU tensors (or a Subset/ConcatDataset of such, or anything defining
                     ``__dc_columns__``): the calling thread turns each index list into row numbers
                     and submits it; the C threads gather the rows from the tensors' memory into
                     new batch tensors, keeping ``prefetch_factor * num_workers`` batches in
                     flight. No Python code runs per item. The rows are read from the dataset's
                     own tensors, so in-place changes are seen; a non-contiguous one (``t.T``) is
                     copied to a contiguous one at the start of each epoch.
  generic path       any other dataset with num_workers > 0: Python code (``__getitem__``,
                     ``__iter__``, a custom collate_fn) must hold the GIL, so ONE daemon Python
                     thread fetches items ahead (up to ``prefetch_factor * num_workers`` batches)
                     and the C threads do the stacking of the tensor/array leaves. This overlaps
                     item fetching with the step whenever the step releases the GIL (dutycycle's
                     kernels do) or the dataset waits on I/O; it does not run several
                     ``__getitem__`` calls in parallel. A custom collate_fn runs on that thread too.
                     An IterableDataset is iterated on that thread (no sharding across workers:
                     ``get_worker_info()`` reports one worker; sharding is the distributed issue's).

Errors: an exception in dataset code, in collate_fn or on a loader thread is raised in the
consuming thread when the batch it belongs to is reached, as the original type with the dataset
index in the message and the original exception chained (``__cause__``). For map-style datasets
the iteration can continue with the next batch afterwards, as in torch.

Randomness and resume: ``shuffle=True`` uses a RandomSampler whose per-epoch seed is drawn from
dutycycle's generator when ``iter()`` is called (or from `generator` / `seed`), so
``dc.manual_seed`` reproduces the order and num_workers never changes it. ``state_dict()`` is
plain JSON data (ints, None, dicts): the epoch, the sampler's seed and how many batches the
current epoch has delivered; after ``load_state_dict`` the next ``iter()`` replays the same order
and skips the delivered batches (map-style: skipped indices are not fetched; iterable: the skipped
items are read and dropped).

Random augmentations inside ``__getitem__`` that draw from dutycycle's global generator are only
reproducible with num_workers=0: on the fetch thread their draws interleave with the step's."""

from __future__ import annotations

import collections
import queue
import threading
import time

import numpy as np

from .. import _C
from .._tensor import Tensor
from .collate import _collate, _CStacker, _fill, _np_supported, default_collate, default_convert
from .dataset import ConcatDataset, IterableDataset, Subset, TensorDataset
from .sampler import BatchSampler, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler

_STATE_VERSION = 1


# --- worker info ------------------------------------------------------------------------------

class WorkerInfo:
    """What ``get_worker_info()`` returns on the loader's fetch thread."""

    def __init__(self, id, num_workers, seed, dataset):
        self.id = id
        self.num_workers = num_workers
        self.seed = seed
        self.dataset = dataset

    def __repr__(self):
        return f"WorkerInfo(id={self.id}, num_workers={self.num_workers}, seed={self.seed})"


_worker_local = threading.local()


def get_worker_info():
    """None in the main program; on the fetch thread (and during worker_init_fn) a WorkerInfo with
    id=0, num_workers=1: one Python thread fetches items, so an IterableDataset needs no sharding."""
    return getattr(_worker_local, "info", None)


# --- errors ------------------------------------------------------------------------------------

def _rewrap(e, msg):
    """An exception of e's type (RuntimeError if that type can't take a message) chained to e."""
    try:
        new = type(e)(msg)
    except Exception:
        new = RuntimeError(msg)
    new.__cause__ = e
    return new


def _fetch(dataset, index):
    try:
        return dataset[index]
    except Exception as e:
        raise _rewrap(e, f"DataLoader: dataset[{index!r}] raised {type(e).__name__}: {e}") from e


def _fetch_items(dataset, indices):
    return [_fetch(dataset, i) for i in indices]


def _next_items(it, count, seen):
    """Up to `count` items of an iterable dataset's iterator; seen[0] counts items read so far."""
    items = []
    for _ in range(count):
        try:
            items.append(next(it))
        except StopIteration:
            break
        except Exception as e:
            raise _rewrap(e, f"DataLoader: iterating the dataset raised {type(e).__name__} at item {seen[0]}: "
                             f"{e}") from e
        seen[0] += 1
    return items


# --- the column fast path ----------------------------------------------------------------------

class _ColumnPlan:
    """Where the rows of a column dataset live: per column a list of CPU tensors (the parts, one
    after the other: the dataset's own tensors, so later in-place changes are seen), and an
    optional map from dataset index to part row."""

    def __init__(self, parts, length, index_map):
        self.parts = parts  # [[Tensor, ...] per column]
        self.length = length
        self.map = index_map  # int64 array (length,) or None (identity)

    @property
    def rows(self):
        return sum(p.shape[0] for p in self.parts[0])

    def row_numbers(self, idx):
        try:
            a = np.asarray(idx, dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"DataLoader: a column dataset needs integer indices, the sampler gave {idx!r}") from e
        if a.ndim != 1:
            raise TypeError(f"DataLoader: expected a list of indices from the batch sampler, got {idx!r}")
        n = self.length
        bad = (a < -n) | (a >= n)
        if bad.any():
            raise IndexError(f"DataLoader: dataset index {int(a[bad][0])} is out of range for a dataset of "
                             f"length {n}")
        a = np.where(a < 0, a + n, a)
        return np.ascontiguousarray(self.map[a] if self.map is not None else a)

    def gather(self, rows):
        """The batch in the calling thread (num_workers=0; single-part columns only), read from the
        live tensors whatever their strides."""
        idx = _C.from_buffer(rows)
        return [_C.gather(p[0], 0, idx, True) for p in self.parts]

    def contiguous_parts(self):
        """The parts as the C workers need them: contiguous. A non-contiguous part (a transposed
        tensor) is copied here, once per epoch, so in-place changes between epochs are seen."""
        return [[x if x.is_contiguous() else x.contiguous() for x in col] for col in self.parts]


def _as_column(c):
    if isinstance(c, Tensor):
        if c.device.type != "cpu" or c.requires_grad or c.dim() == 0:
            return None
        return c  # the live tensor, even when not contiguous (see _ColumnPlan.contiguous_parts)
    if isinstance(c, np.ndarray):
        if c.ndim == 0 or c.dtype.kind in "USOV":
            return None
        try:
            c = _np_supported(c)
        except TypeError:
            return None
        return _C.from_buffer(np.ascontiguousarray(c))
    return None


def _column_plan(ds):
    """A _ColumnPlan when the default collation of ds's items is a gather of rows, else None."""
    t = type(ds)
    if hasattr(t, "__dc_columns__"):
        cols = list(ds.__dc_columns__())
    elif isinstance(ds, TensorDataset) and t.__getitem__ is TensorDataset.__getitem__:
        cols = list(ds.tensors)
    elif isinstance(ds, Subset) and t.__getitem__ is Subset.__getitem__:
        p = _column_plan(ds.dataset)
        if p is None:
            return None
        try:
            idx = np.asarray(ds.indices, dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            return None
        n = p.length
        if len(idx) != len(ds) or ((idx < -n) | (idx >= n)).any():
            return None  # the generic path raises the dataset's own error
        idx = np.where(idx < 0, idx + n, idx)
        return _ColumnPlan(p.parts, len(idx), idx if p.map is None else p.map[idx])
    elif isinstance(ds, ConcatDataset) and t.__getitem__ is ConcatDataset.__getitem__:
        plans = [_column_plan(d) for d in ds.datasets]
        if any(p is None for p in plans) or len({len(p.parts) for p in plans}) != 1:
            return None
        for k in range(len(plans[0].parts)):
            first = plans[0].parts[k][0]
            if any(p.parts[k][0].dtype != first.dtype or p.parts[k][0].shape[1:] != first.shape[1:] for p in plans):
                return None
        parts = [[x for p in plans for x in p.parts[k]] for k in range(len(plans[0].parts))]
        if all(p.map is None and p.length == p.rows for p in plans):
            return _ColumnPlan(parts, sum(p.length for p in plans), None)
        maps, offset = [], 0
        for p in plans:
            maps.append((p.map if p.map is not None else np.arange(p.length, dtype=np.int64)) + offset)
            offset += p.rows
        return _ColumnPlan(parts, sum(p.length for p in plans), np.concatenate(maps))
    else:
        return None
    conv = [_as_column(c) for c in cols]
    if not conv or any(c is None for c in conv) or len({c.shape[0] for c in conv}) != 1:
        return None
    return _ColumnPlan([[c] for c in conv], conv[0].shape[0], None)


# --- iterators ---------------------------------------------------------------------------------

class _Progress:
    """What DataLoader.state_dict reports about the epoch in progress."""

    __slots__ = ("yielded", "finished", "sampler_state", "epoch")

    def __init__(self, epoch, sampler_state):
        self.yielded = 0
        self.finished = False
        self.sampler_state = sampler_state
        self.epoch = epoch


class _BaseIter:
    def __init__(self, loader, resume):
        self._dataset = loader.dataset
        self._auto = loader._auto_collation
        self._batch_size = loader.batch_size
        self._drop_last = loader.drop_last
        self._collate_fn = loader.collate_fn
        self._timeout = loader.timeout
        self._iterable = isinstance(loader.dataset, IterableDataset)
        skip = 0
        if resume is not None:
            skip = int(resume.get("batches_yielded", 0))
            loader._restore_sampler(resume.get("sampler"), replay=skip > 0)
        self._index_iter = None if self._iterable else iter(loader._index_sampler)  # draws the epoch's seed
        self._progress = _Progress(loader._epoch, loader._sampler_state())
        loader._progress = self._progress
        try:
            self._total = len(loader)
        except TypeError:
            self._total = None
        self._skip_items = 0
        if skip:
            if self._iterable:
                self._skip_items = skip * (self._batch_size if self._auto else 1)
            else:
                for _ in range(skip):
                    if next(self._index_iter, None) is None:
                        break
            self._progress.yielded = skip
        if not self._iterable and self._total is not None and self._progress.yielded >= self._total:
            self._progress.finished = True

    def __iter__(self):
        return self

    def __next__(self):
        p = self._progress
        try:
            batch = self._next_batch()
        except StopIteration:
            p.finished = True
            raise
        except _BatchError as e:  # the batch is consumed even though it failed
            p.yielded += 1
            raise e.error from e.error.__cause__
        p.yielded += 1
        if self._total is not None and p.yielded >= self._total:
            p.finished = True
        return batch

    def __len__(self):
        return self._total if self._total is not None else len(self._dataset)


class _BatchError(Exception):
    """Carries a batch's exception to __next__ (which counts the batch as consumed)."""

    def __init__(self, error):
        self.error = error


class _SingleIter(_BaseIter):
    """num_workers == 0: everything in the calling thread."""

    def __init__(self, loader, resume):
        super().__init__(loader, resume)
        self._plan = loader._plan() if (self._auto and self._collate_fn is default_collate) else None
        if self._plan is not None and any(len(p) != 1 for p in self._plan.parts):
            self._plan = None
        if self._iterable:
            self._it = iter(self._dataset)
            self._seen = [0]
            if self._skip_items:
                _next_items(self._it, self._skip_items, self._seen)

    def _next_batch(self):
        if self._iterable:
            items = _next_items(self._it, self._batch_size if self._auto else 1, self._seen)
            if not items or (self._auto and self._drop_last and len(items) < self._batch_size):
                raise StopIteration
            return self._collate_fn(items if self._auto else items[0])
        idx = next(self._index_iter)
        try:
            if not self._auto:
                return self._collate_fn(_fetch(self._dataset, idx))
            if self._plan is not None:
                return self._plan.gather(self._plan.row_numbers(idx))
            return self._collate_fn(_fetch_items(self._dataset, idx))
        except Exception as e:
            raise _BatchError(e) from e


class _GatherIter(_BaseIter):
    """Column fast path: the calling thread submits row numbers, C threads gather."""

    def __init__(self, loader, resume, plan):
        super().__init__(loader, resume)
        self._plan = plan
        self._parts = plan.contiguous_parts()
        self._ahead = loader.prefetch_factor * loader.num_workers
        self._cloader = _C.Loader(loader.num_workers, self._ahead)
        self._pending = collections.deque()  # (batch id or None, error or None), oldest first
        self._next_id = 0
        self._exhausted = False
        self._fill()  # prefetch starts at iter(), as torch's workers do

    def _fill(self):
        while not self._exhausted and len(self._pending) < self._ahead:
            try:
                idx = next(self._index_iter)
            except StopIteration:
                self._exhausted = True
                return
            try:
                rows = self._plan.row_numbers(idx)
                bid = self._next_id
                self._cloader.submit(bid, len(rows), [(parts, rows, False) for parts in self._parts])
                self._next_id += 1
                self._pending.append((bid, None))
            except Exception as e:
                self._pending.append((None, e))  # raised when this batch's turn comes

    def _next_batch(self):
        self._fill()
        if not self._pending:
            raise StopIteration
        bid, err = self._pending.popleft()
        if err is not None:
            raise _BatchError(err)
        tensors = _take_c_batch(self._cloader, self._timeout, self._progress.yielded)
        self._fill()  # keep the threads busy while the caller works on this batch
        return tensors


def _fetch_loop(dataset, index_iter, iterable, auto, batch_size, drop_last, collate_fn, cloader, q, stop,
                worker_init_fn, skip_items, seed):
    """The generic path's fetch thread. It holds no reference to the iterator, so dropping the
    iterator (or the DataLoader) mid-epoch lets __del__ set `stop` and this thread end."""

    def put(msg):
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    _worker_local.info = WorkerInfo(0, 1, seed, dataset)
    try:
        if worker_init_fn is not None:
            worker_init_fn(0)
        if iterable:
            it = iter(dataset)
            seen = [0]
            if skip_items:
                _next_items(it, skip_items, seen)
        sub = 0
        while not stop.is_set():
            try:
                if iterable:
                    items = _next_items(it, batch_size if auto else 1, seen)
                    if not items or (auto and drop_last and len(items) < batch_size):
                        break
                else:
                    try:
                        idx = next(index_iter)
                    except StopIteration:
                        break
                    items = _fetch_items(dataset, idx) if auto else [_fetch(dataset, idx)]
                if not auto:
                    msg = ("py", collate_fn(items[0]))
                elif collate_fn is default_collate and cloader is not None:
                    stacker = _CStacker()
                    skeleton = _collate(items, stacker)
                    if stacker.columns:
                        cloader.submit(sub, len(items), stacker.columns)  # C threads stack the leaves
                        msg = ("c", sub, skeleton)
                        sub += 1
                    else:
                        msg = ("py", skeleton)
                else:
                    msg = ("py", collate_fn(items))
            except Exception as e:
                if not put(("err", e)):
                    return
                if iterable:
                    break  # a stream that raised is over
                continue
            if not put(msg):
                return
        put(("end",))
    except BaseException as e:  # noqa: BLE001 - anything, so the consumer never waits forever
        put(("err", e))
        put(("end",))


class _ThreadedIter(_BaseIter):
    """Generic path: one daemon Python thread fetches items, C threads stack the leaves."""

    def __init__(self, loader, resume, call_init):
        super().__init__(loader, resume)
        ahead = loader.prefetch_factor * loader.num_workers
        self._cloader = _C.Loader(loader.num_workers, ahead) if self._auto else None
        self._q = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._done = False
        from .._functions import initial_seed

        self._thread = threading.Thread(
            target=_fetch_loop, name="dutycycle-data-fetch", daemon=True,
            args=(self._dataset, self._index_iter, self._iterable, self._auto, self._batch_size, self._drop_last,
                  self._collate_fn, self._cloader, self._q, self._stop,
                  loader.worker_init_fn if call_init else None, self._skip_items, initial_seed()))
        self._thread.start()

    def _get(self):
        start = time.monotonic()
        while True:
            try:
                return self._q.get(timeout=0.1)
            except queue.Empty:
                if not self._thread.is_alive() and self._q.empty():
                    raise RuntimeError("DataLoader: the fetch thread ended without finishing the epoch") from None
                if self._timeout > 0 and time.monotonic() - start > self._timeout:
                    raise RuntimeError(f"DataLoader timed out after {self._timeout} seconds") from None

    def _next_batch(self):
        if self._done:
            raise StopIteration
        msg = self._get()
        kind = msg[0]
        if kind == "end":
            self._done = True
            raise StopIteration
        if kind == "err":
            raise _BatchError(msg[1])
        if kind == "py":
            return msg[1]
        _, sub, skeleton = msg
        tensors = _take_c_batch(self._cloader, self._timeout, self._progress.yielded)
        return _fill(skeleton, tensors)

    def close(self):
        self._stop.set()

    def __del__(self):
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()


# --- DataLoader ----------------------------------------------------------------------------------

class _InfiniteConstantSampler(Sampler):
    """The sampler of an IterableDataset: yields None forever (the dataset decides the order)."""

    def __iter__(self):
        while True:
            yield None


class DataLoader:
    """Batches of a dataset; see the module docstring for threads, errors and resume.

    Arguments as torch.utils.data.DataLoader: dataset, batch_size=1, shuffle=False, sampler=None,
    batch_sampler=None, num_workers=0 (C loader threads), collate_fn=None (default_collate when
    batching, default_convert when batch_size=None), drop_last=False, prefetch_factor=None (2 when
    num_workers > 0; batches kept in flight = prefetch_factor * num_workers), persistent_workers
    (accepted; threads are cheap, so it only means worker_init_fn runs once per DataLoader rather
    than once per epoch), generator (numpy Generator or int) and seed (an int: a fixed base seed,
    the epoch picks the order) for shuffling, pin_memory (accepted; a no-op until the CUDA issue
    lands), timeout (seconds to wait for a batch when num_workers > 0; 0 = forever),
    worker_init_fn (called with worker id 0 on the fetch thread, or in the calling thread on the
    column fast path, with get_worker_info() set)."""

    _frozen = ("batch_size", "batch_sampler", "sampler", "drop_last", "dataset", "persistent_workers")

    def __init__(self, dataset, batch_size=1, shuffle=None, sampler=None, batch_sampler=None, num_workers=0,
                 collate_fn=None, drop_last=False, prefetch_factor=None, persistent_workers=False, generator=None,
                 seed=None, pin_memory=False, timeout=0, worker_init_fn=None):
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to load in the calling "
                             "thread")
        if timeout < 0:
            raise ValueError("timeout option should be non-negative")
        if num_workers == 0 and prefetch_factor is not None:
            raise ValueError("prefetch_factor option could only be specified with num_workers > 0 (loader threads); "
                             "otherwise set prefetch_factor to None.")
        if num_workers > 0 and prefetch_factor is None:
            prefetch_factor = 2
        if prefetch_factor is not None and (not isinstance(prefetch_factor, int) or prefetch_factor < 1):
            raise ValueError(f"prefetch_factor option should be a positive int, got {prefetch_factor!r}")
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers option needs num_workers > 0")
        if generator is not None and seed is not None:
            raise ValueError("DataLoader: give either generator or seed for shuffling, not both")

        if isinstance(dataset, IterableDataset):
            if shuffle not in (None, False):
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified shuffle option, but got "
                                 f"shuffle={shuffle}")
            if sampler is not None:
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified sampler option, but got "
                                 f"sampler={sampler}")
            if batch_sampler is not None:
                raise ValueError(f"DataLoader with IterableDataset: expected unspecified batch_sampler option, but "
                                 f"got batch_sampler={batch_sampler}")
        shuffle = bool(shuffle)
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and "
                                 "drop_last")
            batch_size = None
            drop_last = False
        elif batch_size is None:
            if drop_last:
                raise ValueError("batch_size=None option disables auto-batching and is mutually exclusive with "
                                 "drop_last")
        if sampler is None:
            if isinstance(dataset, IterableDataset):
                sampler = _InfiniteConstantSampler()
            elif shuffle:
                sampler = RandomSampler(dataset, generator=generator, seed=seed)
            else:
                sampler = SequentialSampler(dataset)
        if batch_size is not None and batch_sampler is None:
            batch_sampler = BatchSampler(sampler, batch_size, drop_last)
        if collate_fn is None:
            collate_fn = default_collate if batch_sampler is not None else default_convert

        self.dataset = dataset
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.persistent_workers = persistent_workers
        self.collate_fn = collate_fn
        self.generator = generator
        self.seed = seed
        self.pin_memory = pin_memory
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self._epoch = 0
        self._progress = None
        self._resume = None
        self._column_plan = False  # not resolved yet
        self._init_called = False
        self.__initialized = True

    def __setattr__(self, name, value):
        if self.__dict__.get("_DataLoader__initialized") and name in self._frozen:
            raise ValueError(f"{name} attribute should not be set after {type(self).__name__} is initialized")
        super().__setattr__(name, value)

    @property
    def _auto_collation(self):
        return self.batch_sampler is not None

    @property
    def _index_sampler(self):
        return self.batch_sampler if self._auto_collation else self.sampler

    def _plan(self):
        if self._column_plan is False:
            self._column_plan = None if isinstance(self.dataset, IterableDataset) else _column_plan(self.dataset)
        return self._column_plan

    def __len__(self):
        if isinstance(self.dataset, IterableDataset):
            n = len(self.dataset)  # TypeError when the dataset has no __len__, as in torch
            if self.batch_size is not None:
                n = n // self.batch_size if self.drop_last else -(-n // self.batch_size)
            return n
        return len(self._index_sampler)

    def __iter__(self):
        resume, self._resume = self._resume, None
        if self.num_workers == 0:
            return _SingleIter(self, resume)
        call_init = self.worker_init_fn is not None and not (self.persistent_workers and self._init_called)
        self._init_called = self._init_called or call_init
        plan = self._plan() if (self._auto_collation and self.collate_fn is default_collate) else None
        if plan is not None:
            if call_init:
                _worker_local.info = WorkerInfo(0, 1, _C.rng_state()[0], self.dataset)
                try:
                    self.worker_init_fn(0)
                finally:
                    _worker_local.info = None
            return _GatherIter(self, resume, plan)
        return _ThreadedIter(self, resume, call_init)

    # --- epochs and resume ---------------------------------------------------------------------

    def set_epoch(self, epoch):
        """Tell the sampler(s) which epoch starts next (a seeded RandomSampler's order depends on
        it; Lightning calls this at every epoch start)."""
        self._epoch = int(epoch)
        for s in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if s is not None and hasattr(s, "set_epoch"):
                s.set_epoch(epoch)
                break

    def _stateful_sampler(self):
        for s in (self._index_sampler, getattr(self._index_sampler, "sampler", None)):
            if s is not None and hasattr(s, "state_dict") and hasattr(s, "load_state_dict"):
                return s
        return None

    def _sampler_state(self):
        s = self._stateful_sampler()
        return s.state_dict() if s is not None else None

    def _restore_sampler(self, state, replay):
        s = self._stateful_sampler()
        if s is None or state is None:
            return
        if isinstance(s, (RandomSampler, SubsetRandomSampler, BatchSampler)):
            s.load_state_dict(state, replay=replay)
        else:
            s.load_state_dict(state)

    def state_dict(self):
        """Where the current epoch stands, as plain JSON data. Load it into a DataLoader built the
        same way; its next iter() continues with the next undelivered batch in the same order."""
        p = self._progress
        if p is None or p.finished:
            yielded, sampler = 0, self._sampler_state()
        else:
            yielded, sampler = p.yielded, p.sampler_state
        return {"version": _STATE_VERSION, "epoch": self._epoch, "batches_yielded": int(yielded),
                "sampler": sampler}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or "batches_yielded" not in state:
            raise ValueError(f"DataLoader.load_state_dict: not a DataLoader state: {state!r}")
        if state.get("version", _STATE_VERSION) != _STATE_VERSION:
            raise ValueError(f"DataLoader.load_state_dict: unknown state version {state.get('version')}")
        self._epoch = int(state.get("epoch", 0))
        if int(state["batches_yielded"]) > 0:
            self._resume = dict(state)  # applied by the next iter()
        else:
            self._resume = None
            self._restore_sampler(state.get("sampler"), replay=False)


def _take_c_batch(cloader, timeout, batch_no):
    """The next batch the C loader threads assembled (its tensors), waiting at most `timeout`
    seconds (0: forever); a failure on a loader thread is raised here, in the consuming thread."""
    try:
        _, tensors = cloader.next(timeout if timeout > 0 else -1.0)
    except TimeoutError as e:
        raise RuntimeError(f"DataLoader timed out after {timeout} seconds") from e
    except Exception as e:
        raise _BatchError(_rewrap(e, f"DataLoader: a loader thread failed on batch {batch_no}: {e}")) from e
    return tensors
