"""dutycycle.cuda.Stream / Event / stream(): torch.cuda's stream and event API over device.cu.

The compute stream of a device is CUDA's legacy default stream (torch's default_stream()); every
kernel runs on the current stream of its device, which ``with dutycycle.cuda.stream(s):`` changes
for the calling thread. Streams made here are non-blocking: order between them is by events only
(``wait_stream``, ``wait_event``), as in torch."""

from __future__ import annotations

from .. import _C


def _require(what):
    from . import is_available, is_built

    if not is_available():
        raise RuntimeError(f"dutycycle.cuda.{what}: no CUDA device is available "
                           f"(built with CUDA: {is_built()}); streams and events need a GPU")


class Stream:
    """A CUDA stream (torch.cuda.Stream(device=None, priority=0)): lower priority numbers are more
    urgent (-1 is high priority, as in torch). Owns its stream, destroyed with the object."""

    def __init__(self, device=None, priority=0, **kwargs):
        from . import _index

        _require("Stream")
        self.device_index = _index(device)
        handle = kwargs.get("_handle")
        self._owned = handle is None
        self._handle = _C.cuda_stream_create(self.device_index, int(priority)) if handle is None else handle

    @classmethod
    def _wrap(cls, device_index, handle):
        s = cls.__new__(cls)
        s.device_index, s._handle, s._owned = device_index, handle, False
        return s

    @property
    def device(self):
        from .._dtype import device

        return device("cuda", self.device_index)

    @property
    def cuda_stream(self):
        """The cudaStream_t as an int (0 for the legacy default stream's handle is not guaranteed)."""
        return self._handle

    def synchronize(self):
        """Wait for all work queued on this stream (a sync point, counted)."""
        _C.cuda_stream_synchronize(self._handle)

    def query(self):
        """True when all work queued on this stream has finished (never waits)."""
        return _C.cuda_stream_query(self._handle)

    def wait_event(self, event):
        """Work queued on this stream after now waits for `event` (on the device; the host goes on)."""
        _C.cuda_stream_wait_event(self._handle, event._handle)

    def wait_stream(self, stream):
        """Work queued on this stream after now waits for the work queued on `stream` so far."""
        self.wait_event(stream.record_event())

    def record_event(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event

    def __eq__(self, other):
        return isinstance(other, Stream) and other._handle == self._handle and other.device_index == self.device_index

    def __hash__(self):
        return hash((self._handle, self.device_index))

    def __repr__(self):
        return f"<dutycycle.cuda.Stream device=cuda:{self.device_index} cuda_stream={self._handle:#x}>"

    def __del__(self):
        if getattr(self, "_owned", False) and _C is not None:
            _C.cuda_stream_destroy(self._handle)
            self._owned = False


class Event:
    """A CUDA event (torch.cuda.Event(enable_timing=False, blocking=False, interprocess=False))."""

    def __init__(self, enable_timing=False, blocking=False, interprocess=False):
        _require("Event")
        if interprocess:
            raise NotImplementedError("dutycycle.cuda.Event(interprocess=True) is not supported")
        self.enable_timing = bool(enable_timing)
        self._handle = _C.cuda_event_create(self.enable_timing, bool(blocking))

    def record(self, stream=None):
        stream = current_stream() if stream is None else stream
        _C.cuda_event_record(self._handle, stream._handle)

    def wait(self, stream=None):
        stream = current_stream() if stream is None else stream
        stream.wait_event(self)

    def query(self):
        return _C.cuda_event_query(self._handle)

    def synchronize(self):
        """Wait until the recorded work is done (a sync point, counted)."""
        _C.cuda_event_synchronize(self._handle)

    def elapsed_time(self, end_event):
        """Milliseconds between this event and end_event (both recorded with enable_timing=True)."""
        if not (self.enable_timing and end_event.enable_timing):
            raise RuntimeError("elapsed_time: both events must be created with enable_timing=True")
        return _C.cuda_event_elapsed(self._handle, end_event._handle)

    def __del__(self):
        h = getattr(self, "_handle", None)
        if h is not None and _C is not None:
            _C.cuda_event_destroy(h)
            self._handle = None

    def __repr__(self):
        return f"<dutycycle.cuda.Event timing={self.enable_timing}>"


def current_stream(device=None):
    """The stream kernels of this thread run on for `device` (torch.cuda.current_stream)."""
    from . import _index

    _require("current_stream")
    i = _index(device)
    return Stream._wrap(i, _C.cuda_current_stream(i))


def default_stream(device=None):
    """The device's compute stream: CUDA's legacy default stream (torch.cuda.default_stream)."""
    from . import _index

    _require("default_stream")
    return Stream._wrap(_index(device), _C.cuda_compute_stream())


def set_stream(stream):
    """Make `stream` current for its device in this thread (torch.cuda.set_stream)."""
    if stream is None:
        return
    _C.cuda_set_current_stream(stream.device_index, stream._handle)


class StreamContext:
    """``with dutycycle.cuda.stream(s):`` — `s` is current for its device inside the block (None:
    no change), the previous stream afterwards."""

    def __init__(self, stream):
        self.stream = stream
        self._prev = None

    def __enter__(self):
        if self.stream is not None:
            self._prev = current_stream(self.stream.device_index)
            set_stream(self.stream)
        return self.stream

    def __exit__(self, *exc):
        if self._prev is not None:
            set_stream(self._prev)
            self._prev = None
        return False


def stream(stream):
    return StreamContext(stream)
