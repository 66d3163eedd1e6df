"""TensorBoardLogger: real TensorBoard event files, written without tensorflow or tensorboard.

An event file is a sequence of TFRecords: u64 length (LE), masked crc32c of those 8 bytes, the data,
masked crc32c of the data. Each record's data is an ``Event`` protobuf, encoded by hand here:

    Event   { 1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary }
    Summary { 1: repeated Value }
    Value   { 1: tag string, 2: simple_value float, 4: image Image, 5: histo HistogramProto,
              8: tensor TensorProto, 9: metadata SummaryMetadata }
    Image   { 1: height int32, 2: width int32, 3: colorspace int32, 4: encoded_image_string bytes (PNG) }
    HistogramProto { 1: min, 2: max, 3: num, 4: sum, 5: sum_squares double,
                     6: bucket_limit, 7: bucket packed double }
    TensorProto { 1: dtype (7 = DT_STRING), 2: tensor_shape { 2: dim { 1: size } }, 8: string_val bytes }
    SummaryMetadata { 1: plugin_data { 1: plugin_name string, 2: content bytes } }

The first record of a file is ``Event{wall_time, file_version: "brain.Event:2"}``. Scalars use
``simple_value`` (what TensorBoard's scalar dashboard and EventAccumulator read). Images are PNGs
encoded here (zlib + struct, no Pillow) from CHW / HWC / HW arrays (float in [0, 1] or uint8), as
torch.utils.tensorboard's add_image writes them (one channel shown as RGB); add_images lays NCHW
batches out as a grid of 8 per row; add_text uses the text plugin; add_histogram torch's default
("tensorflow") bucket edges. Hyper-parameters
go to hparams.yaml (as Lightning) and to the hparams plugin's three summaries
(``_hparams_/experiment``, ``_hparams_/session_start_info``, ``_hparams_/session_end_info``).
"""

import datetime
import math
import os
import socket
import struct
import threading
import time
import zlib

import numpy as np

from ._yaml import save_hparams_to_yaml
from .logger import (
    _add_prefix,
    _convert_params,
    _flatten_dict,
    _sanitize_params,
    _to_python_scalar,
    _VersionedFolderLogger,
    rank_zero_experiment,
    rank_zero_only,
)

# ---------------------------------------------------------------------------------------------
# crc32c (Castagnoli, reflected polynomial 0x82F63B78), table-driven, and TFRecord's masking.


def _make_crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _make_crc32c_table()


def crc32c(data, crc=0):
    """CRC-32C of ``data`` (bytes-like); ``crc`` continues a previous value."""
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """TFRecord's masked CRC: rotate right by 15 and add a constant, mod 2**32."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data):
    """One TFRecord frame around ``data``."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


# ---------------------------------------------------------------------------------------------
# Protobuf wire format, the few pieces we need.


def _varint(n):
    if n < 0:
        n += 1 << 64  # int64 negatives are 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field, wire):
    return _varint((field << 3) | wire)


def pb_varint(field, n):
    return _key(field, 0) + _varint(int(n))


def pb_double(field, x):
    return _key(field, 1) + struct.pack("<d", float(x))


def pb_float(field, x):
    return _key(field, 5) + struct.pack("<f", float(x))


def pb_bytes(field, b):
    if isinstance(b, str):
        b = b.encode("utf-8")
    return _key(field, 2) + _varint(len(b)) + b


def event(wall_time, step=0, file_version=None, summary=None):
    """An encoded Event message; ``summary`` is an encoded Summary message."""
    out = pb_double(1, wall_time)
    if step:
        out += pb_varint(2, step)
    if file_version is not None:
        out += pb_bytes(3, file_version)
    if summary is not None:
        out += pb_bytes(5, summary)
    return out


def summary_scalar(tag, value):
    """An encoded Summary holding one simple_value."""
    return pb_bytes(1, pb_bytes(1, tag) + pb_float(2, value))


def _as_numpy(x):
    """A dc.Tensor / numpy array / nested list as a numpy array. # note: host copy of a tensor."""
    if hasattr(x, "detach") and hasattr(x, "numpy"):
        x = x.detach()
        if hasattr(x, "cpu"):
            x = x.cpu()
        return np.asarray(x.numpy())
    return np.asarray(x)


def png_encode(pixels):
    """PNG bytes of an (H, W, C) uint8 array, C = 1 (gray), 3 (RGB) or 4 (RGBA): signature, IHDR,
    one zlib-compressed IDAT (every row with filter type 0), IEND; each chunk CRC-32 checked."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    h, w, c = pixels.shape
    color_type = {1: 0, 3: 2, 4: 6}[c]

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = np.concatenate([np.zeros((h, 1), np.uint8), pixels.reshape(h, w * c)], axis=1)  # filter byte 0
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    idat = zlib.compress(rows.tobytes(), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _grid(images, ncols=8):
    """(N, C, H, W) -> (C, rows * H, ncols * W), row-major, empty cells zero (torch's make_grid for
    add_images: no padding)."""
    n, c, h, w = images.shape
    ncols = min(n, ncols)
    nrows = int(math.ceil(n / ncols))
    canvas = np.zeros((c, nrows * h, ncols * w), dtype=images.dtype)
    for i in range(n):
        r, k = divmod(i, ncols)
        canvas[:, r * h : (r + 1) * h, k * w : (k + 1) * w] = images[i]
    return canvas


def to_hwc_uint8(img, dataformats="CHW"):
    """An image (dc.Tensor or array) in `dataformats` ("CHW", "HWC", "HW", "NCHW", "NHWC", ...) as
    (H, W, 3 or 4) uint8: floats are taken as [0, 1] and scaled by 255 (clipped), uint8 as is, one
    channel repeated to RGB (what torch.utils.tensorboard writes)."""
    a = _as_numpy(img)
    fmt = dataformats.upper()
    if len(set(fmt)) != len(fmt) or not set(fmt) <= set("NCHW") or not {"H", "W"} <= set(fmt):
        raise ValueError(f"dataformats={dataformats!r}: expected a permutation of CHW, HWC, HW, NCHW, NHWC, ...")
    if a.ndim != len(fmt):
        raise ValueError(f"an image with dataformats={dataformats!r} needs {len(fmt)} dimensions, got shape {a.shape}")
    if "N" in fmt:
        a = a.transpose([fmt.index(d) for d in "NCHW" if d in fmt])
        if "C" not in fmt:
            a = a[:, None]
        a = _grid(a).transpose(1, 2, 0)
    elif "C" in fmt:
        a = a.transpose([fmt.index(d) for d in "HWC"])
    else:
        a = a.transpose([fmt.index(d) for d in "HW"])[:, :, None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    if a.shape[2] not in (3, 4):
        raise ValueError(f"an image needs 1, 3 or 4 channels, got {a.shape[2]}")
    if a.dtype != np.uint8:
        a = np.clip(a.astype(np.float32) * 255.0, 0, 255).astype(np.uint8)
    return a


def summary_image(tag, hwc):
    """An encoded Summary holding one PNG image of an (H, W, C) uint8 array."""
    h, w, c = hwc.shape
    image = pb_varint(1, h) + pb_varint(2, w) + pb_varint(3, c) + pb_bytes(4, png_encode(hwc))
    return pb_bytes(1, pb_bytes(1, tag) + pb_bytes(4, image))


def summary_text(tag, text):
    """An encoded Summary for the text plugin (tag + "/text_summary", as torch writes it)."""
    shape = pb_bytes(2, pb_bytes(2, pb_varint(1, 1)))
    tensor = pb_varint(1, 7) + shape + pb_bytes(8, text)
    metadata = pb_bytes(1, pb_bytes(1, "text"))
    return pb_bytes(1, pb_bytes(1, tag + "/text_summary") + pb_bytes(9, metadata) + pb_bytes(8, tensor))


def _tensorflow_bins():
    """torch.utils.tensorboard's default histogram edges: +-1e-12 * 1.1**k up to 1e20, and 0."""
    v, pos = 1e-12, []
    while v < 1e20:
        pos.append(v)
        v *= 1.1
    return [-x for x in reversed(pos)] + [0.0] + pos


def summary_histogram(tag, values, bins="tensorflow"):
    """An encoded Summary with the HistogramProto of `values` (empty edge buckets trimmed)."""
    v = _as_numpy(values).astype(np.float64).ravel()
    if v.size == 0:
        raise ValueError("The input has no element.")
    edges = _tensorflow_bins() if bins == "tensorflow" else bins
    counts, limits = np.histogram(v, bins=edges)
    nz = np.flatnonzero(counts)
    lo, hi = (int(nz[0]), int(nz[-1])) if nz.size else (0, len(counts) - 1)
    counts, limits = counts[lo : hi + 1], limits[lo + 1 : hi + 2]
    histo = (
        pb_double(1, v.min()) + pb_double(2, v.max()) + pb_double(3, v.size) + pb_double(4, v.sum())
        + pb_double(5, float(np.dot(v, v)))
        + pb_bytes(6, np.asarray(limits, "<f8").tobytes()) + pb_bytes(7, np.asarray(counts, "<f8").tobytes())
    )  # fmt: skip
    return pb_bytes(1, pb_bytes(1, tag) + pb_bytes(5, histo))


def _summary_plugin(tag, plugin_name, content):
    metadata = pb_bytes(1, pb_bytes(1, plugin_name) + pb_bytes(2, content))
    return pb_bytes(1, pb_bytes(1, tag) + pb_bytes(9, metadata))


def _pb_value(v):
    """google.protobuf.Value: number_value 2, string_value 3, bool_value 4."""
    if isinstance(v, bool):
        return pb_varint(4, int(v))
    if isinstance(v, (int, float)):
        return pb_double(2, v)
    return pb_bytes(3, str(v))


def hparams_summaries(hparams, metric_tags, start_time=None):
    """The three encoded Summaries TensorBoard's hparams plugin reads (what torch's
    ``torch.utils.tensorboard.summary.hparams`` writes): experiment, session start, session end."""
    # HParamsPluginData { 1: version int32, 2: experiment, 3: session_start_info, 4: session_end_info }
    # Experiment { 4: repeated HParamInfo{1: name, 4: type}, 5: repeated MetricInfo{1: MetricName{2: tag}} }
    # SessionStartInfo { 1: map<string, Value> hparams, 5: start_time_secs double }
    # SessionEndInfo { 1: status enum (1 = success) }
    dtype = {bool: 2, str: 1}
    infos = b"".join(pb_bytes(4, pb_bytes(1, k) + pb_varint(4, dtype.get(type(v), 3))) for k, v in hparams.items())
    infos += b"".join(pb_bytes(5, pb_bytes(1, pb_bytes(2, tag))) for tag in metric_tags)
    experiment = pb_varint(1, 0) + pb_bytes(2, infos)
    entries = b"".join(pb_bytes(1, pb_bytes(1, k) + pb_bytes(2, _pb_value(v))) for k, v in hparams.items())
    start = entries + pb_double(5, time.time() if start_time is None else start_time)
    session_start = pb_varint(1, 0) + pb_bytes(3, start)
    session_end = pb_varint(1, 0) + pb_bytes(4, pb_varint(1, 1))
    return [
        _summary_plugin("_hparams_/experiment", "hparams", experiment),
        _summary_plugin("_hparams_/session_start_info", "hparams", session_start),
        _summary_plugin("_hparams_/session_end_info", "hparams", session_end),
    ]


# ---------------------------------------------------------------------------------------------
# Writers


_global_uid = 0
_uid_lock = threading.Lock()


class EventFileWriter:
    """Appends Events to one ``events.out.tfevents.<time>.<host>.<pid>.<uid>`` file in ``log_dir``.

    Writes go through a buffered file; ``flush()`` (and every ``flush_secs``) pushes them out."""

    def __init__(self, log_dir, flush_secs=120, filename_suffix=""):
        global _global_uid
        os.makedirs(log_dir, exist_ok=True)
        with _uid_lock:
            uid = _global_uid
            _global_uid += 1
        name = "events.out.tfevents.%010d.%s.%s.%s" % (time.time(), socket.gethostname(), os.getpid(), uid)
        self.path = os.path.join(log_dir, name + filename_suffix)
        self._f = open(self.path, "wb")
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()
        self.add_event(event(time.time(), file_version="brain.Event:2"))
        self.flush()

    def add_event(self, encoded_event):
        if self._f is None:
            raise ValueError(f"event file {self.path} is closed")
        self._f.write(tfrecord(encoded_event))
        if time.monotonic() - self._last_flush >= self._flush_secs:
            self.flush()

    def add_summary(self, encoded_summary, step=0, walltime=None):
        self.add_event(event(time.time() if walltime is None else walltime, step=step, summary=encoded_summary))

    def flush(self):
        if self._f is not None:
            self._f.flush()
            self._last_flush = time.monotonic()

    def close(self):
        if self._f is not None:
            self._f.flush()
            self._f.close()
            self._f = None


class SummaryWriter:
    """``torch.utils.tensorboard.SummaryWriter`` (also the TensorBoardLogger's ``experiment``):
    add_scalar, add_scalars, add_image, add_images, add_text, add_histogram, add_hparams, flush,
    close, and use as a context manager. ``log_dir=None`` is ``runs/<date>_<hostname><comment>``;
    the event file appears with the first write."""

    def __init__(self, log_dir=None, comment="", purge_step=None, max_queue=10, flush_secs=120, filename_suffix=""):
        if not log_dir:
            stamp = datetime.datetime.now().strftime("%b%d_%H-%M-%S")
            log_dir = os.path.join("runs", stamp + "_" + socket.gethostname() + comment)
        self.log_dir = os.fspath(log_dir)
        self.purge_step, self.max_queue = purge_step, max_queue  # accepted; every event is written
        self._flush_secs = flush_secs
        self._suffix = filename_suffix
        self._writer = None
        self._children = {}  # add_scalars' per-tag writers, as torch keeps them

    def get_logdir(self):
        return self.log_dir

    def _get_file_writer(self):
        if self._writer is None:
            self._writer = EventFileWriter(self.log_dir, self._flush_secs, self._suffix)
        return self._writer

    def add_scalar(self, tag, scalar_value, global_step=None, walltime=None):
        value = float(_to_python_scalar(scalar_value))
        self._get_file_writer().add_summary(summary_scalar(tag, value), global_step or 0, walltime)

    def add_scalars(self, main_tag, tag_scalar_dict, global_step=None, walltime=None):
        walltime = time.time() if walltime is None else walltime
        for tag, value in tag_scalar_dict.items():
            path = os.path.join(self.log_dir, main_tag.replace("/", "_") + "_" + tag)
            w = self._children.get(path)
            if w is None:
                w = self._children[path] = EventFileWriter(path, self._flush_secs, self._suffix)
            w.add_summary(summary_scalar(main_tag, float(_to_python_scalar(value))), global_step or 0, walltime)

    def add_image(self, tag, img_tensor, global_step=None, walltime=None, dataformats="CHW"):
        """One image (CHW by default; HWC, HW too): floats in [0, 1] or uint8. # note: host copy."""
        hwc = to_hwc_uint8(img_tensor, dataformats)
        self._get_file_writer().add_summary(summary_image(tag, hwc), global_step or 0, walltime)

    def add_images(self, tag, img_tensor, global_step=None, walltime=None, dataformats="NCHW"):
        """A batch of images as one grid image, 8 per row."""
        self.add_image(tag, img_tensor, global_step, walltime, dataformats=dataformats)

    def add_text(self, tag, text_string, global_step=None, walltime=None):
        self._get_file_writer().add_summary(summary_text(tag, text_string), global_step or 0, walltime)

    def add_histogram(self, tag, values, global_step=None, bins="tensorflow", walltime=None, max_bins=None):
        self._get_file_writer().add_summary(summary_histogram(tag, values, bins), global_step or 0, walltime)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def add_hparams(self, hparam_dict, metric_dict, global_step=0):
        w = self._get_file_writer()
        for s in hparams_summaries(hparam_dict, list(metric_dict)):
            w.add_summary(s, 0)
        for k, v in metric_dict.items():
            self.add_scalar(k, v, global_step)

    def flush(self):
        for w in [self._writer, *self._children.values()]:
            if w is not None:
                w.flush()

    def close(self):
        for w in [self._writer, *self._children.values()]:
            if w is not None:
                w.close()
        self._writer = None
        self._children = {}


class TensorBoardLogger(_VersionedFolderLogger):
    """Log to TensorBoard event files: ``TensorBoardLogger(save_dir, name="lightning_logs",
    version=None, log_graph=False, default_hp_metric=True, prefix="", sub_dir=None, flush_secs=120)``.
    Files go to ``<save_dir>/<name>/version_<n>[/<sub_dir>]``."""

    NAME_HPARAMS_FILE = "hparams.yaml"

    def __init__(
        self,
        save_dir,
        name="lightning_logs",
        version=None,
        log_graph=False,
        default_hp_metric=True,
        prefix="",
        sub_dir=None,
        **kwargs,
    ):
        super().__init__()
        self._save_dir = os.fspath(save_dir)
        self._name = name or ""
        self._version = version
        self._sub_dir = None if sub_dir is None else os.fspath(sub_dir)
        self._log_graph = log_graph
        self._default_hp_metric = default_hp_metric
        self._prefix = prefix
        self._flush_secs = kwargs.pop("flush_secs", 120)
        self._filename_suffix = kwargs.pop("filename_suffix", "")
        if kwargs:
            raise TypeError(f"TensorBoardLogger got unexpected keyword arguments: {sorted(kwargs)}")
        self._experiment = None
        self.hparams = {}

    @property
    def sub_dir(self):
        return self._sub_dir

    @property
    def log_dir(self):
        version = self.version if isinstance(self.version, str) else f"version_{self.version}"
        log_dir = os.path.join(self.root_dir, version)
        if self._sub_dir:
            log_dir = os.path.join(log_dir, self._sub_dir)
        return os.path.expanduser(os.path.expandvars(log_dir))

    @property
    @rank_zero_experiment
    def experiment(self):
        """Our SummaryWriter (the event file appears on the first write)."""
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = SummaryWriter(
                self.log_dir, flush_secs=self._flush_secs, filename_suffix=self._filename_suffix
            )
        return self._experiment

    @rank_zero_only
    def log_hyperparams(self, params, metrics=None):
        """Record hyper-parameters: hparams.yaml at ``save()`` and the hparams plugin summaries now;
        ``hp_metric = -1`` is logged at step 0 unless ``default_hp_metric=False`` (as Lightning)."""
        params = _convert_params(params)
        self.hparams.update(params)
        flat = _sanitize_params(_flatten_dict(params))
        if metrics is None:
            metrics = {"hp_metric": -1} if self._default_hp_metric else {}
        elif not isinstance(metrics, dict):
            metrics = {"hp_metric": metrics}
        if metrics:
            self.log_metrics(metrics, 0)
        writer = self.experiment._get_file_writer()
        for s in hparams_summaries(flat, list(metrics)):
            writer.add_summary(s, 0)

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        metrics = _add_prefix(metrics, self._prefix, self.LOGGER_JOIN_CHAR)
        for k, v in metrics.items():
            v = _to_python_scalar(v)
            if isinstance(v, dict):
                self.experiment.add_scalars(k, v, step)
                continue
            try:
                self.experiment.add_scalar(k, v, step)
            except Exception as ex:
                raise ValueError(
                    f"you tried to log {v!r} under {k!r}, which is not supported: log a scalar, a one-element "
                    "tensor or a dict of those"
                ) from ex

    @rank_zero_only
    def save(self):
        super().save()
        if self._experiment is not None:
            self._experiment.flush()
        log_dir = self.log_dir
        hparams_file = os.path.join(log_dir, self.NAME_HPARAMS_FILE)
        if os.path.isdir(log_dir) and not os.path.isfile(hparams_file):
            save_hparams_to_yaml(hparams_file, self.hparams)

    @rank_zero_only
    def finalize(self, status):
        if self._experiment is not None:
            self._experiment.flush()
            self._experiment.close()
        if status == "success":
            self.save()
