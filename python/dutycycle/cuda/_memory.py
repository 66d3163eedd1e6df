"""dutycycle.cuda's memory functions (torch.cuda.memory_stats, max_memory_allocated, empty_cache,
...) over the caching device allocator (csrc/alloc/, one per GPU). The keys of memory_stats() are
torch's ("allocated_bytes.all.current", ...); on a machine without a usable GPU every figure is 0,
as torch reports for a device it never initialised."""

from __future__ import annotations

from .. import _C

OutOfMemoryError = MemoryError  # what the allocator raises; `except torch.cuda.OutOfMemoryError` catches it


def _stats(device):
    from . import _index, is_available

    if not is_available():
        return None
    return _C.cuda_memory_stats(_index(device))


def memory_stats(device=None):
    """The caching allocator's counters for `device` (torch.cuda.memory_stats). Beyond torch's:
    "num_device_alloc"/"num_device_free" count cudaMalloc/cudaFree calls (all devices): flat across
    steps in a steady training loop."""
    s = _stats(device)
    if s is None:
        return {}
    out = {}
    for ours, theirs in (("allocated_bytes", "allocated_bytes"), ("reserved_bytes", "reserved_bytes"),
                         ("requested_bytes", "requested_bytes")):
        out[f"{theirs}.all.current"] = s[ours]
        out[f"{theirs}.all.peak"] = s[f"{ours}_peak"]
    out["active.all.current"] = s["active_blocks"]
    out["segment.all.current"] = s["segments"]
    out["inactive_split.all.current"] = s["free_blocks"]
    out["pending_free.all.current"] = s["pending_blocks"]
    out["allocation.all.allocated"] = s["num_allocs"]
    out["allocation.all.freed"] = s["num_frees"]
    out["num_ooms"] = s["num_ooms"]
    out["num_device_alloc"] = s["cuda_malloc_calls"]
    out["num_device_free"] = s["cuda_free_calls"]
    return out


def memory_allocated(device=None):
    """Bytes of device memory held by tensors now (rounded block sizes)."""
    s = _stats(device)
    return 0 if s is None else s["allocated_bytes"]


def max_memory_allocated(device=None):
    s = _stats(device)
    return 0 if s is None else s["allocated_bytes_peak"]


def memory_reserved(device=None):
    """Bytes the allocator holds from cudaMalloc (tensors + its cache)."""
    s = _stats(device)
    return 0 if s is None else s["reserved_bytes"]


def max_memory_reserved(device=None):
    s = _stats(device)
    return 0 if s is None else s["reserved_bytes_peak"]


def reset_peak_memory_stats(device=None):
    from . import _index, is_available

    if is_available():
        _C.cuda_reset_peak(_index(device))


reset_max_memory_allocated = reset_peak_memory_stats


def empty_cache():
    """Return the cached, unused device (and pinned host) memory to CUDA: other processes can use
    it; this one's tensors are not touched."""
    from . import is_available

    if is_available():
        _C.cuda_empty_cache()


def mem_get_info(device=None):
    """(free, total) bytes of the GPU, as CUDA reports them."""
    from . import _index, is_available

    if not is_available():
        raise RuntimeError("dutycycle.cuda.mem_get_info(): no CUDA device is available")
    return tuple(_C.cuda_mem_get_info(_index(device)))


def memory_summary(device=None, abbreviated=False):
    s = memory_stats(device)
    if not s:
        return "no CUDA device: nothing allocated"
    mib = 1 << 20
    rows = [("allocated", "allocated_bytes"), ("reserved", "reserved_bytes"), ("requested", "requested_bytes")]
    lines = [f"{'':<12}{'current':>14}{'peak':>14}"]
    for name, key in rows:
        lines.append(f"{name:<12}{s[key + '.all.current'] / mib:>11.1f} MiB{s[key + '.all.peak'] / mib:>10.1f} MiB")
    lines.append(f"blocks in use {s['active.all.current']}, segments {s['segment.all.current']}, "
                 f"cudaMalloc calls {s['num_device_alloc']}, OOMs {s['num_ooms']}")
    return "\n".join(lines)
