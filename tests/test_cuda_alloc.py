"""The caching allocator (csrc/alloc/) that holds CUDA device memory and pinned host memory, driven
here over host memory with fake streams and events (_C.CacheAllocator), so its bookkeeping is
tested on every machine: rounding, best fit, splitting and merging, per-stream pools, deferred reuse
after record_stream, the out-of-memory retry, the byte limit and the statistics."""

import random

import pytest

from dutycycle import _C

KiB, MiB = 1 << 10, 1 << 20


def live_ranges_disjoint(live):
    spans = sorted((addr, addr + size) for addr, size in live.items())
    return all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))


def test_rounding_and_segment_sizes():
    assert _C.CacheAllocator.round(1) == (512, 2 * MiB)
    assert _C.CacheAllocator.round(512) == (512, 2 * MiB)
    assert _C.CacheAllocator.round(513) == (1024, 2 * MiB)
    assert _C.CacheAllocator.round(1 * MiB) == (1 * MiB, 2 * MiB)  # the largest small request
    assert _C.CacheAllocator.round(1 * MiB + 1) == (1 * MiB + 512, 20 * MiB)  # mid-size: shared 20 MiB segments
    assert _C.CacheAllocator.round(10 * MiB) == (10 * MiB, 10 * MiB)  # large: its own segment, 2 MiB steps
    assert _C.CacheAllocator.round(10 * MiB + 1) == (10 * MiB + 512, 12 * MiB)
    assert _C.CacheAllocator.round(0) == (0, 0)


def test_zero_bytes_is_null_and_release_of_null_is_a_no_op():
    a = _C.CacheAllocator()
    assert a.alloc(0) == 0
    a.release(0)
    assert a.stats()["num_raw_allocs"] == 0


def test_steady_state_makes_no_raw_calls():
    """A training step allocates and frees the same sizes every step: after the first step the raw
    allocator (cudaMalloc) is never called again."""
    a = _C.CacheAllocator()
    sizes = [3 * KiB, 700 * KiB, 4 * MiB, 33 * MiB, 128, 12 * MiB + 17]

    def step():
        ptrs = [a.alloc(n) for n in sizes]
        for p in reversed(ptrs[::2]):
            a.release(p)
        ptrs2 = [a.alloc(n) for n in sizes[::2]]
        for p in ptrs[1::2] + ptrs2:
            a.release(p)

    step()
    raw = a.stats()["num_raw_allocs"]
    for _ in range(50):
        step()
    s = a.stats()
    assert s["num_raw_allocs"] == raw and s["num_raw_frees"] == 0
    assert s["allocated_bytes"] == 0 and s["active_blocks"] == 0


def test_split_then_merge_back_into_one_segment():
    a = _C.CacheAllocator()
    ptrs = [a.alloc(512 * KiB) for _ in range(4)]  # one 2 MiB small segment, split four ways
    s = a.stats()
    assert s["segments"] == 1 and s["num_splits"] == 3 and s["free_blocks"] == 0
    assert sorted(ptrs) == [ptrs[0] + k * 512 * KiB for k in range(4)]
    for p in (ptrs[1], ptrs[3], ptrs[0], ptrs[2]):  # middle last: merges both ways
        a.release(p)
    s = a.stats()
    assert s["free_blocks"] == 1 and s["num_merges"] == 3
    big = a.alloc(1 * MiB)  # fits in the merged block: no new segment
    assert big == ptrs[0] and a.stats()["segments"] == 1
    a.release(big)
    a.empty_cache()
    s = a.stats()
    assert s["segments"] == 0 and s["reserved_bytes"] == 0 and s["raw_segments"] == 0


def test_best_fit_picks_the_smallest_free_block_that_fits():
    a = _C.CacheAllocator()
    big = a.alloc(40 * MiB)
    small = a.alloc(12 * MiB)
    a.release(big)
    a.release(small)
    p = a.alloc(11 * MiB)
    assert p == small
    a.release(p)


def test_a_block_is_reused_only_by_its_own_stream():
    a = _C.CacheAllocator()
    p = a.alloc(64 * KiB, 1)
    a.release(p)
    q = a.alloc(64 * KiB, 2)  # another stream: must not get memory stream 1 may still be using
    assert q != p and a.stats()["segments"] == 2
    r = a.alloc(64 * KiB, 1)
    assert r == p
    a.release(q)
    a.release(r)


def test_record_stream_defers_reuse_until_the_event_completes():
    a = _C.CacheAllocator()
    p = a.alloc(256 * KiB, 1)
    a.record_stream(p, 2)  # e.g. a batch copied on the copy stream, read on the compute stream
    a.record_stream(p, 2)  # twice is once
    a.record_stream(p, 1)  # its own stream: nothing to wait for
    a.release(p)
    s = a.stats()
    assert s["pending_blocks"] == 1 and s["live_events"] == 1
    q = a.alloc(256 * KiB, 1)
    assert q != p  # stream 2 may still read p
    assert a.complete_events(3) == 0
    assert a.complete_events(2) == 1
    r = a.alloc(256 * KiB, 1)  # the poll at this call frees p
    assert r == p
    s = a.stats()
    assert s["pending_blocks"] == 0 and s["live_events"] == 0
    a.release(q)
    a.release(r)


def test_record_stream_of_a_foreign_pointer_names_it():
    a = _C.CacheAllocator()
    with pytest.raises(ValueError, match="not memory handed out"):
        a.record_stream(0x1000, 2)


def test_double_release_is_an_internal_error_not_a_crash():
    a = _C.CacheAllocator()
    p = a.alloc(100)
    a.release(p)
    with pytest.raises(_C.InternalError, match="did not hand out or which was already released"):
        a.release(p)
    with pytest.raises(_C.InternalError):
        a.release(p + 512)


def test_out_of_memory_first_returns_the_cache_then_retries():
    a = _C.CacheAllocator(capacity=21 * MiB)
    p, q = a.alloc(1 * MiB), a.alloc(1 * MiB, 1)  # two 2 MiB small segments (two streams)
    a.release(p)
    a.release(q)
    assert a.stats()["raw_bytes"] == 4 * MiB
    r = a.alloc(2 * MiB)  # wants a 20 MiB segment: 24 > 21, so the free small segments go back first
    s = a.stats()
    assert r and s["num_raw_frees"] == 2 and s["reserved_bytes"] == 20 * MiB and s["num_ooms"] == 0
    a.release(r)


def test_out_of_memory_names_the_sizes_and_keeps_the_allocator_usable():
    a = _C.CacheAllocator(capacity=8 * MiB)
    keep = a.alloc(5 * MiB)  # a 20 MiB shared segment does not fit: an exact 6 MiB one does
    assert keep and a.stats()["reserved_bytes"] == 6 * MiB
    with pytest.raises(MemoryError) as e:
        a.alloc(30 * MiB)
    msg = str(e.value)
    assert "fake device" in msg and "30.00 MiB" in msg and "reserved" in msg
    assert a.stats()["num_ooms"] >= 1
    p = a.alloc(1 * KiB)  # still works
    a.release(p)
    a.release(keep)


def test_limit_caps_reserved_memory():
    a = _C.CacheAllocator(limit=4 * MiB)
    p = a.alloc(100 * KiB)
    q = a.alloc(1 * MiB)  # fits in the first 2 MiB segment
    with pytest.raises(MemoryError, match="memory limit"):
        a.alloc(3 * MiB)  # a 20 MiB segment would pass the 4 MiB limit
    r = a.alloc(1 * MiB)  # a second small segment: 4 MiB in all
    assert a.stats()["reserved_bytes"] == 4 * MiB
    for x in (p, q, r):
        a.release(x)


def test_peaks_and_reset():
    a = _C.CacheAllocator()
    p = a.alloc(3 * MiB)
    q = a.alloc(1000)
    s = a.stats()
    assert s["allocated_bytes_peak"] == 3 * MiB + 1024 and s["requested_bytes_peak"] == 3 * MiB + 1000
    a.release(p)
    a.reset_peak()
    s = a.stats()
    assert s["allocated_bytes_peak"] == 1024 and s["reserved_bytes_peak"] == s["reserved_bytes"]
    a.release(q)


def test_random_workload_against_a_model():
    """Thousands of random allocs, releases and cross-stream uses: live blocks never overlap, each
    is at least as large as asked, the counters agree with the model, and at the end everything
    goes back to the raw allocator."""
    rng = random.Random(1234)
    a = _C.CacheAllocator()
    live = {}  # addr -> requested
    sizes = [1, 100, 512, 4 * KiB, 60 * KiB, 1 * MiB, 1 * MiB + 1, 3 * MiB, 9 * MiB, 11 * MiB, 25 * MiB]
    for i in range(4000):
        op = rng.random()
        if op < 0.5 or not live:
            n = rng.choice(sizes) + rng.randrange(0, 3000)
            p = a.alloc(n, rng.randrange(3))
            assert p % 512 == 0 and p not in live
            assert a.block_size(p) >= n
            live[p] = n
        elif op < 0.9:
            p = rng.choice(list(live))
            if rng.random() < 0.2:
                a.record_stream(p, rng.randrange(3))
            del live[p]
            a.release(p)
        else:
            a.complete_events(rng.randrange(3))
        if i % 200 == 0:
            assert live_ranges_disjoint({p: a.block_size(p) for p in live})
            s = a.stats()
            assert s["active_blocks"] == len(live)
            assert s["requested_bytes"] == sum(live.values())
            assert s["allocated_bytes"] == sum(a.block_size(p) for p in live)
            assert s["allocated_bytes"] <= s["reserved_bytes"] == s["raw_bytes"]
    for p in list(live):
        a.release(p)
    a.complete_events()
    a.empty_cache()
    s = a.stats()
    assert s["allocated_bytes"] == 0 and s["reserved_bytes"] == 0 and s["raw_segments"] == 0
    assert s["pending_blocks"] == 0 and s["live_events"] == 0
    assert s["num_allocs"] == s["num_frees"]
