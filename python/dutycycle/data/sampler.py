"""Samplers: which dataset indices an epoch visits, in which order (torch.utils.data semantics).

Randomness: a RandomSampler draws ONE 62-bit seed per epoch and expands it into the epoch's order
with NumPy's PCG64 (`numpy.random.default_rng(seed).permutation(n)`). The seed comes from
  - dutycycle's global generator (the default), so ``dc.manual_seed`` / ``seed_everything`` make
    the order reproducible; the draw happens when the epoch's iterator is created (``iter()``),
    in the calling thread, never lazily on a loader thread;
  - or `generator`: a ``dutycycle.Generator``, a ``numpy.random.Generator`` (or an int, which seeds one);
  - or `seed`: a fixed base seed; epoch e then uses a seed derived from (seed, e), like a
    DistributedSampler, and ``set_epoch`` picks e (without set_epoch calls, each new iteration
    advances e by one).
Because the epoch's order is a pure function of that seed, ``state_dict()`` is just a few ints and a
resumed epoch replays the same order (DataLoader.load_state_dict)."""

from __future__ import annotations

import numpy as np

_SEED_HIGH = 1 << 62
_CHUNK = 1 << 15  # indices drawn at a time by a RandomSampler with replacement


def _draw_seed(generator):
    """One seed from `generator`, or from dutycycle's global generator when it is None."""
    if generator is None:
        from .._functions import randint

        return int(randint(0, _SEED_HIGH, (1,)).item())
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(0, _SEED_HIGH))
    from .._functions import Generator, randint

    if isinstance(generator, Generator):
        return int(randint(0, _SEED_HIGH, (1,), generator=generator).item())
    raise TypeError(f"generator must be None, an int, a dutycycle.Generator or a numpy.random.Generator, got "
                    f"{type(generator).__name__}")


def _as_generator(generator):
    from .._functions import Generator

    if generator is None or isinstance(generator, (np.random.Generator, Generator)):
        return generator
    if isinstance(generator, int) and not isinstance(generator, bool):
        return np.random.default_rng(generator)
    raise TypeError(f"generator must be None, an int, a dutycycle.Generator or a numpy.random.Generator, got "
                    f"{type(generator).__name__}")


def _epoch_seed(seed, epoch):
    return int(np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, epoch]).generate_state(1, np.uint64)[0]) >> 2


def _permutation(n, generator=None):
    """A permutation of range(n) (int64 array) from one seed drawn from `generator`."""
    return np.random.default_rng(_draw_seed(_as_generator(generator))).permutation(n)


class Sampler:
    """Base class: ``__iter__`` yields indices (or lists of indices for a batch sampler)."""

    def __init__(self, data_source=None):
        pass

    def __iter__(self):
        raise NotImplementedError


class SequentialSampler(Sampler):
    """0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


class RandomSampler(Sampler):
    """Random order without replacement (a permutation per epoch; with num_samples > len, whole
    permutations then part of one), or `num_samples` draws with replacement. See the module
    docstring for where the randomness comes from."""

    def __init__(self, data_source, replacement=False, num_samples=None, generator=None, seed=None):
        if not isinstance(replacement, bool):
            raise TypeError(f"replacement should be a boolean value, but got replacement={replacement}")
        if num_samples is not None and (not isinstance(num_samples, int) or isinstance(num_samples, bool)
                                        or num_samples <= 0):
            raise ValueError(f"num_samples should be a positive integer value, but got num_samples={num_samples}")
        if generator is not None and seed is not None:
            raise ValueError("RandomSampler: give either generator or seed, not both")
        self.data_source = data_source
        self.replacement = replacement
        self._num_samples = num_samples
        self.generator = _as_generator(generator)
        self.seed = seed
        self.epoch = 0
        self._epoch_set = False
        self._iters = 0
        self._seed_used = None  # the seed of the iteration started last
        self._replay = None  # a seed load_state_dict asked the next iteration to reuse

    @property
    def num_samples(self):
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self._epoch_set = True

    def _next_seed(self):
        if self._replay is not None:
            s, self._replay = self._replay, None
            return s
        if self.seed is not None:
            if self._iters > 0 and not self._epoch_set:
                self.epoch += 1
            return _epoch_seed(self.seed, self.epoch)
        return _draw_seed(self.generator)

    def _order(self, seed):
        """The epoch's indices, drawn lazily: `_CHUNK` draws at a time with replacement, one
        permutation of len(data_source) at a time without. Memory stays O(len(data_source) +
        _CHUNK) whatever num_samples is (minGPT asks for 10**10 draws)."""
        n = len(self.data_source)
        total = self.num_samples
        rng = np.random.default_rng(seed)
        if self.replacement:
            done = 0
            while done < total:
                k = min(_CHUNK, total - done)
                yield from rng.integers(0, n, size=k, dtype=np.int64).tolist()
                done += k
            return
        done = 0
        while done < total:
            perm = rng.permutation(n)
            k = min(n, total - done)
            yield from perm[:k].tolist()
            done += k

    def __iter__(self):
        # eager: the seed is drawn here, in the thread that calls iter(), not at the first next()
        s = self._next_seed()
        self._seed_used = s
        self._iters += 1
        self._epoch_set = False
        return self._order(s)

    def __len__(self):
        return self.num_samples

    def state_dict(self):
        """Plain ints: the epoch, how many iterations were started, the last iteration's seed."""
        return {"epoch": self.epoch, "iters": self._iters, "seed": self._seed_used}

    def load_state_dict(self, state, replay=True):
        """Restore; with replay=True the next ``iter()`` reuses the saved seed (same order)."""
        self.epoch = int(state.get("epoch", 0))
        self._iters = int(state.get("iters", 0))
        self._seed_used = state.get("seed")
        self._epoch_set = False
        self._replay = self._seed_used if replay else None


class SubsetRandomSampler(Sampler):
    """The given indices in a random order (a RandomSampler over them)."""

    def __init__(self, indices, generator=None, seed=None):
        self.indices = indices
        self._inner = RandomSampler(range(len(indices)), generator=generator, seed=seed)

    def set_epoch(self, epoch):
        self._inner.set_epoch(epoch)

    def __iter__(self):
        return iter([self.indices[i] for i in iter(self._inner)])

    def __len__(self):
        return len(self.indices)

    def state_dict(self):
        return self._inner.state_dict()

    def load_state_dict(self, state, replay=True):
        self._inner.load_state_dict(state, replay)


class WeightedRandomSampler(Sampler):
    """`num_samples` indices drawn with probability proportional to `weights` (with or without
    replacement), as torch.utils.data.WeightedRandomSampler; the epoch's seed comes from the
    generator as for RandomSampler (see the module docstring)."""

    def __init__(self, weights, num_samples, replacement=True, generator=None):
        if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples <= 0:
            raise ValueError(f"num_samples should be a positive integer value, but got num_samples={num_samples}")
        if not isinstance(replacement, bool):
            raise ValueError(f"replacement should be a boolean value, but got replacement={replacement}")
        from .._tensor import Tensor

        w = weights.detach().numpy() if isinstance(weights, Tensor) else np.asarray(weights)
        w = np.asarray(w, dtype=np.float64)
        if w.ndim != 1:
            raise ValueError(f"weights should be a 1d sequence but given weights have shape {tuple(w.shape)}")
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        if not replacement and num_samples > int((w > 0).sum()):
            raise ValueError(f"WeightedRandomSampler: cannot draw {num_samples} samples without replacement from "
                             f"{int((w > 0).sum())} indices of non-zero weight")
        self.weights = w
        self.num_samples = num_samples
        self.replacement = replacement
        self.generator = _as_generator(generator)

    def _draws(self, seed):
        rng = np.random.default_rng(seed)
        p = self.weights / self.weights.sum()
        if not self.replacement:
            yield from rng.choice(len(p), size=self.num_samples, replace=False, p=p).tolist()
            return
        done = 0
        while done < self.num_samples:
            k = min(_CHUNK, self.num_samples - done)
            yield from rng.choice(len(p), size=k, replace=True, p=p).tolist()
            done += k

    def __iter__(self):
        return self._draws(_draw_seed(self.generator))  # seed drawn now, as RandomSampler

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Groups another sampler's indices into lists of `batch_size` (the last one shorter unless
    drop_last)."""

    def __init__(self, sampler, batch_size, drop_last):
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
            raise ValueError(f"batch_size should be a positive integer value, but got batch_size={batch_size}")
        if not isinstance(drop_last, bool):
            raise ValueError(f"drop_last should be a boolean value, but got drop_last={drop_last}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __iter__(self):
        it = iter(self.sampler)  # eager, so a RandomSampler draws its seed now (see module docstring)
        return self._batches(it)

    def _batches(self, it):
        bs = self.batch_size
        while True:
            batch = []
            for idx in it:
                batch.append(idx)
                if len(batch) == bs:
                    break
            if not batch or (self.drop_last and len(batch) < bs):
                return
            yield batch
            if len(batch) < bs:
                return

    def __len__(self):
        if self.drop_last:
            return len(self.sampler) // self.batch_size
        return (len(self.sampler) + self.batch_size - 1) // self.batch_size

    def set_epoch(self, epoch):
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def state_dict(self):
        return self.sampler.state_dict() if hasattr(self.sampler, "state_dict") else None

    def load_state_dict(self, state, replay=True):
        if state is not None and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state, replay)


class DistributedSampler(Sampler):
    """This rank's share of the dataset (torch.utils.data.distributed.DistributedSampler).

    Every rank builds the same epoch order (a permutation from (seed, epoch) when shuffle, else
    0..n-1), pads it by repeating its start until it divides by num_replicas (or, with drop_last,
    cuts the tail), and takes every num_replicas-th index from position `rank`. So the ranks'
    shares are disjoint (but for the padding), of equal length — every rank runs the same number of
    batches, so no rank waits forever at the end of an epoch — and `set_epoch(e)` reshuffles.
    num_replicas / rank default to the default process group's."""

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None or rank is None:
            from .. import distributed

            if not distributed.is_initialized():
                raise RuntimeError(
                    "DistributedSampler: pass num_replicas and rank, or call "
                    "dutycycle.distributed.init_process_group() first"
                )
            num_replicas = distributed.get_world_size() if num_replicas is None else num_replicas
            rank = distributed.get_rank() if rank is None else rank
        if not isinstance(num_replicas, int) or num_replicas < 1:
            raise ValueError(f"DistributedSampler: num_replicas must be an int >= 1, got {num_replicas!r}")
        if not isinstance(rank, int) or not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval [0, {num_replicas - 1}]")
        self.dataset = dataset
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        n = len(dataset)
        if self.drop_last and n % num_replicas:
            self.num_samples = n // num_replicas
        else:
            self.num_samples = -(-n // num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def _indices(self):
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng(_epoch_seed(self.seed, self.epoch)).permutation(n)
        else:
            order = np.arange(n, dtype=np.int64)
        if not self.drop_last:
            pad = self.total_size - n
            if pad > 0:
                reps = -(-pad // n) if n else 0
                order = np.concatenate([order] + [order] * reps)[: self.total_size]
        else:
            order = order[: self.total_size]
        return order[self.rank : self.total_size : self.num_replicas]

    def __iter__(self):
        return iter(self._indices().tolist())

    def __len__(self):
        return self.num_samples

    def state_dict(self):
        return {"epoch": self.epoch}

    def load_state_dict(self, state, replay=True):
        self.epoch = int(state.get("epoch", 0))
