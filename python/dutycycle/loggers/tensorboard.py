"""TensorBoardLogger: real TensorBoard event files, written without tensorflow or tensorboard.

An event file is a sequence of TFRecords: u64 length (LE), masked crc32c of those 8 bytes, the data,
masked crc32c of the data. Each record's data is an ``Event`` protobuf, encoded by hand here:

    Event   { 1: wall_time double, 2: step int64, 3: file_version string, 5: summary Summary }
    Summary { 1: repeated Value }
    Value   { 1: tag string, 2: simple_value float, 9: metadata SummaryMetadata }
    SummaryMetadata { 1: plugin_data { 1: plugin_name string, 2: content bytes } }

The first record of a file is ``Event{wall_time, file_version: "brain.Event:2"}``. Scalars use
``simple_value`` (what TensorBoard's scalar dashboard and EventAccumulator read). Hyper-parameters
go to hparams.yaml (as Lightning) and to the hparams plugin's three summaries
(``_hparams_/experiment``, ``_hparams_/session_start_info``, ``_hparams_/session_end_info``).
"""

import os
import socket
import struct
import threading
import time

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
    """The part of ``torch.utils.tensorboard.SummaryWriter`` the logger's ``experiment`` offers:
    add_scalar, add_scalars, add_hparams, flush, close."""

    def __init__(self, log_dir, flush_secs=120, filename_suffix=""):
        self.log_dir = log_dir
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
            self._experiment = SummaryWriter(self.log_dir, self._flush_secs, self._filename_suffix)
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
