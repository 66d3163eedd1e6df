"""Progress bars: ProgressBar (base), TQDMProgressBar and RichProgressBar — our own renderers, no tqdm
or rich needed.

What the bar shows: ``Epoch 3:  45%|█████     | 45/100 [00:03<00:04, 12.3it/s, duty=97.1%, v_num=0,
train_loss=0.123]`` — epoch, batch i/N, elapsed<remaining, it/s, the live duty cycle
(``trainer.progress_bar_metrics["duty"]``, a percentage), ``v_num`` and, as in Lightning 2, only the
metrics logged with ``prog_bar=True`` (no automatic ``loss`` entry).

Where: ``sys.stderr`` (looked up at each write, so redirections work). On a terminal, one line
redrawn with ``\\r`` at most every ``mininterval`` seconds (validation takes the line over while it
runs, then hands it back); otherwise (CI logs, files) plain lines: one at the end of every epoch
and of every validate/test/predict run, plus one every ``line_interval`` seconds in between.

Cost: metrics are read (``get_metrics``; a sync point when they live on a device) only when a line
is drawn, never more often than the throttle allows.
"""

import math
import os
import shutil
import sys
import time

from ._utils import fn_name, rank_zero_warn
from .callback import Callback


def get_standard_metrics(trainer):
    """{"v_num": logger version} when there is a logger (string versions: their last 4 characters)."""
    items = {}
    loggers = list(getattr(trainer, "loggers", None) or [])
    if loggers:
        from dutycycle.loggers.logger import _version

        version = _version(loggers)
        if version not in ("", None):
            if isinstance(version, str):
                version = version[-4:]
            items["v_num"] = version
    return items


class ProgressBar(Callback):
    """Base class of progress bars (Lightning's): totals, descriptions, enable/disable, get_metrics."""

    def __init__(self):
        self._trainer = None
        self._current_eval_dataloader_idx = None

    @property
    def trainer(self):
        if self._trainer is None:
            raise TypeError(f"The `{self.__class__.__name__}._trainer` reference has not been set yet.")
        return self._trainer

    @property
    def sanity_check_description(self):
        return "Sanity Checking"

    @property
    def train_description(self):
        return "Training"

    @property
    def validation_description(self):
        return "Validation"

    @property
    def test_description(self):
        return "Testing"

    @property
    def predict_description(self):
        return "Predicting"

    @property
    def total_train_batches(self):
        return getattr(self.trainer, "num_training_batches", None)

    def _eval_total(self, attr):
        batches = getattr(self.trainer, attr, None)
        if isinstance(batches, (list, tuple)):
            idx = self._current_eval_dataloader_idx or 0
            return batches[idx] if idx < len(batches) else None
        return batches

    @property
    def total_val_batches_current_dataloader(self):
        if getattr(self.trainer, "sanity_checking", False) and hasattr(self.trainer, "num_sanity_val_batches"):
            return self._eval_total("num_sanity_val_batches")
        return self._eval_total("num_val_batches")

    @property
    def total_test_batches_current_dataloader(self):
        return self._eval_total("num_test_batches")

    @property
    def total_predict_batches_current_dataloader(self):
        return self._eval_total("num_predict_batches")

    @property
    def total_val_batches(self):
        batches = getattr(self.trainer, "num_val_batches", 0)
        return sum(batches) if isinstance(batches, (list, tuple)) else batches

    def has_dataloader_changed(self, dataloader_idx):
        old = self._current_eval_dataloader_idx
        self._current_eval_dataloader_idx = dataloader_idx
        return old != dataloader_idx

    def reset_dataloader_idx_tracker(self):
        self._current_eval_dataloader_idx = None

    def disable(self):
        """Stop drawing (other processes than rank 0 call it)."""
        raise NotImplementedError

    def enable(self):
        raise NotImplementedError

    def print(self, *args, **kwargs):
        print(*args, **kwargs)

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer
        if not getattr(trainer, "is_global_zero", True):
            self.disable()

    def get_metrics(self, trainer, pl_module):
        """What the bar shows after the counts: ``v_num`` and ``trainer.progress_bar_metrics``."""
        standard = get_standard_metrics(trainer)
        pbar = dict(getattr(trainer, "progress_bar_metrics", None) or {})
        dups = sorted(standard.keys() & pbar.keys())
        if dups:
            rank_zero_warn(
                f"The progress bar already tracks a metric with the name(s) '{', '.join(dups)}' and"
                f" `self.log('{dups[0]}', ..., prog_bar=True)` will overwrite this value. "
                " If this is undesired, change the name or override `get_metrics()` in the progress bar callback."
            )
        return {**standard, **pbar}


# ---------------------------------------------------------------------------------------------
# Rendering


def _format_num(n):
    """tqdm's compact number: 3 significant digits unless the plain form is shorter."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return str(n)
    if isinstance(n, float) and not math.isfinite(n):
        return str(n)
    f = f"{n:.3g}".replace("+0", "+").replace("-0", "-")
    s = str(n)
    return f if len(f) < len(s) else s


def _format_value(key, v):
    if hasattr(v, "item") and not isinstance(v, (int, float, str)):
        try:
            v = v.item()  # note: a sync point on a device
        except Exception:
            return str(v)
    if key == "duty" and isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{float(v):.1f}%"  # the trainer gives a percentage
    return _format_num(v)


def _format_interval(t):
    t = int(t)
    h, rem = divmod(t, 3600)
    m, s = divmod(rem, 60)
    return f"{h:d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _known_total(total):
    return isinstance(total, (int, float)) and not isinstance(total, bool) and math.isfinite(total) and total > 0


class _Bar:
    """The state of one bar: description, counts, start time, metrics."""

    def __init__(self, desc, total):
        self.desc = desc
        self.total = int(total) if _known_total(total) else None
        self.n = 0
        self.t0 = time.monotonic()
        self.postfix = {}

    def rate(self):
        dt = time.monotonic() - self.t0
        return self.n / dt if dt > 0 and self.n else None

    def text(self, width=None, with_bar=True, ascii_bar=False):
        elapsed = time.monotonic() - self.t0
        rate = self.rate()
        if rate is None:
            rate_s = "?it/s"
        elif rate >= 1:
            rate_s = f"{rate:.2f}it/s"
        else:
            rate_s = f"{1 / rate:.2f}s/it"
        # duty first: it is the number users come for, and it must survive a narrow terminal
        items = sorted(self.postfix.items(), key=lambda kv: kv[0] != "duty")
        post = "".join(f", {k}={_format_value(k, v)}" for k, v in items)
        if self.total is None:
            return f"{self.desc}: {self.n} [{_format_interval(elapsed)}, {rate_s}{post}]"
        frac = min(max(self.n / self.total, 0.0), 1.0)
        remaining = "?" if rate is None else _format_interval(max(self.total - self.n, 0) / rate)
        right = f" {self.n}/{self.total} [{_format_interval(elapsed)}<{remaining}, {rate_s}{post}]"
        left = f"{self.desc}: {frac * 100:3.0f}%"
        if not with_bar:
            return left + right
        room = 30 if width is None else min(30, width - len(left) - len(right) - 3)
        if room < 5:
            return left + right
        fill = "#" if ascii_bar else "\u2588"
        done = int(frac * room)
        return f"{left}|{fill * done}{' ' * (room - done)}|{right}"


class _TextDisplay:
    """One terminal line redrawn with \\r (TTY), or plain lines (not a TTY)."""

    def __init__(self, file, mininterval, line_interval):
        self._file = file
        self.mininterval = mininterval
        self.line_interval = line_interval
        self.bars = {}  # key ("main" / "eval") -> _Bar
        self._line_len = 0  # characters of an unfinished \r line on the terminal
        self._last_draw = 0.0
        self._last_line = 0.0

    @property
    def file(self):
        return self._file if self._file is not None else sys.stderr

    def is_tty(self):
        try:
            return bool(self.file.isatty())
        except Exception:
            return False

    def _write(self, s):
        f = self.file
        try:
            f.write(s)
            f.flush()
        except (ValueError, OSError):  # closed stream (interpreter shutdown, captured output gone)
            pass

    def _ascii(self):
        enc = (getattr(self.file, "encoding", None) or "").lower().replace("-", "")
        return enc not in ("utf8", "utf16", "utf32")

    def _draw_tty(self, bar):
        cols = shutil.get_terminal_size((100, 20)).columns
        line = bar.text(width=cols - 1, ascii_bar=self._ascii())[: cols - 1]
        pad = " " * max(self._line_len - len(line), 0)
        self._write("\r" + line + pad)
        self._line_len = len(line)

    def _clear_tty(self):
        if self._line_len:
            self._write("\r" + " " * self._line_len + "\r")
            self._line_len = 0

    def _newline_tty(self):
        if self._line_len:
            self._write("\n")
            self._line_len = 0

    def start(self, key, desc, total):
        self.bars[key] = _Bar(desc, total)
        if self.is_tty():
            self._draw_tty(self.bars[key])
            self._last_draw = time.monotonic()
        else:
            self._last_line = time.monotonic()

    def wants_draw(self, key, force=False):
        """Whether an update now would be drawn (so the caller can skip reading metrics)."""
        bar = self.bars.get(key)
        if bar is None:
            return False
        if force:
            return True
        now = time.monotonic()
        if self.is_tty():
            return now - self._last_draw >= self.mininterval or (bar.total is not None and bar.n >= bar.total)
        return self.line_interval is not None and now - self._last_line >= self.line_interval

    def update(self, key, n, postfix=None, force=False):
        bar = self.bars.get(key)
        if bar is None:
            return
        bar.n = n
        if postfix is not None:
            bar.postfix = postfix
        if not self.wants_draw(key, force):
            return
        if self.is_tty():
            if key == "main" and "eval" in self.bars:
                return  # validation owns the line while it runs
            self._draw_tty(bar)
            self._last_draw = time.monotonic()
        else:
            self._write(bar.text(with_bar=False) + "\n")
            self._last_line = time.monotonic()

    def set_postfix(self, key, postfix):
        bar = self.bars.get(key)
        if bar is not None:
            bar.postfix = postfix

    def close(self, key, leave, print_line=True):
        """End bar ``key``: keep its final line (``leave``) or wipe it. Without a TTY the final line is
        printed when ``print_line``."""
        bar = self.bars.pop(key, None)
        if bar is None:
            return
        if self.is_tty():
            if leave:
                self._draw_tty(bar)
                self._newline_tty()
            else:
                self._clear_tty()
            other = self.bars.get("main")
            if other is not None:
                self._draw_tty(other)
                self._last_draw = time.monotonic()
        elif print_line:
            self._write(bar.text(with_bar=False) + "\n")
            self._last_line = time.monotonic()

    def finish_line(self):
        """Move past an unfinished \\r line (before an error message, say)."""
        if self.is_tty():
            self._newline_tty()


class TQDMProgressBar(ProgressBar):
    """The default progress bar: ``TQDMProgressBar(refresh_rate=1, process_position=0, leave=False)``.

    ``refresh_rate``: draw every n batches (0 disables the bar). ``leave``: keep each finished
    epoch's line. Ours also takes ``file`` (default sys.stderr), ``mininterval`` (seconds between
    terminal redraws) and ``line_interval`` (seconds between plain lines when not a terminal)."""

    def __init__(self, refresh_rate=1, process_position=0, leave=False, file=None, mininterval=0.1, line_interval=30.0):
        super().__init__()
        self._refresh_rate = self._resolve_refresh_rate(refresh_rate)
        self._process_position = process_position
        self._leave = leave
        self._enabled = True
        self._display = self._make_display(file, mininterval, line_interval)

    def _make_display(self, file, mininterval, line_interval):
        return _TextDisplay(file, mininterval, line_interval)

    @staticmethod
    def _resolve_refresh_rate(refresh_rate):
        # Colab and other notebook front ends drop fast updates; as Lightning, slow down there.
        if os.getenv("COLAB_GPU") and refresh_rate == 1:
            return 20
        return refresh_rate

    @property
    def refresh_rate(self):
        return self._refresh_rate

    @property
    def process_position(self):
        return self._process_position

    @property
    def is_enabled(self):
        return self._enabled and self.refresh_rate > 0

    @property
    def is_disabled(self):
        return not self.is_enabled

    def disable(self):
        self._enabled = False

    def enable(self):
        self._enabled = True

    def _should_update(self, current, total):
        return self.is_enabled and (current % self.refresh_rate == 0 or current == total)

    def _metrics(self, trainer, pl_module, training=False):
        metrics = self.get_metrics(trainer, pl_module)
        if training and "duty" not in metrics:
            duty = getattr(trainer, "duty_cycle", None)
            frac = getattr(duty, "recent_fraction", None) or getattr(duty, "fraction", None)
            if frac is not None and getattr(duty, "running", True):
                try:
                    metrics["duty"] = 100.0 * float(frac())
                except Exception:
                    pass
        return metrics

    def _update(self, key, n, total, trainer, pl_module, training=False):
        if not self._should_update(n, total):
            return
        d = self._display
        bar = d.bars.get(key)
        if bar is None:
            return
        bar.n = n
        if d.wants_draw(key):
            d.update(key, n, self._metrics(trainer, pl_module, training))

    # ---- sanity check -------------------------------------------------------------------------
    def on_sanity_check_start(self, trainer, pl_module):
        self._trainer = trainer  # the bar opens at the first batch, when the totals are known

    def on_sanity_check_end(self, trainer, pl_module):
        self._display.close("eval", leave=False, print_line=False)
        self.reset_dataloader_idx_tracker()

    # ---- training -----------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module):
        self._trainer = trainer

    def on_train_epoch_start(self, trainer, pl_module):
        self._trainer = trainer
        if not self.is_enabled:
            return
        if "main" in self._display.bars and not self._leave:
            self._display.bars.pop("main")  # reuse the line, as tqdm's reset()
        self._display.start("main", f"Epoch {trainer.current_epoch}", self.total_train_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._update("main", batch_idx + 1, self.total_train_batches, trainer, pl_module, training=True)

    def on_train_epoch_end(self, trainer, pl_module):
        if not self.is_enabled or "main" not in self._display.bars:
            return
        self._display.set_postfix("main", self._metrics(trainer, pl_module, training=True))
        if self._leave:
            self._display.close("main", leave=True)  # terminal: keep the line; otherwise print it
        else:
            self._display.update("main", self._display.bars["main"].n, force=True)  # redraw / print a line

    def on_train_end(self, trainer, pl_module):
        self._display.close("main", leave=True, print_line=False)

    # ---- validation ---------------------------------------------------------------------------
    def on_validation_start(self, trainer, pl_module):
        self._trainer = trainer
        self.reset_dataloader_idx_tracker()

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if not self.is_enabled or not self.has_dataloader_changed(dataloader_idx):
            return
        desc = self.sanity_check_description if trainer.sanity_checking else self.validation_description
        nvb = getattr(trainer, "num_val_batches", None)
        if isinstance(nvb, (list, tuple)) and len(nvb) > 1:
            desc = f"{desc} DataLoader {dataloader_idx}"
        self._display.start("eval", desc, self.total_val_batches_current_dataloader)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        bar = self._display.bars.get("eval")
        self._update("eval", batch_idx + 1, bar.total if bar else None, trainer, pl_module)

    def on_validation_end(self, trainer, pl_module):
        if getattr(trainer, "sanity_checking", False):
            return
        standalone = fn_name(trainer) == "validate"
        if "eval" in self._display.bars:
            if standalone:
                self._display.set_postfix("eval", self.get_metrics(trainer, pl_module))
            self._display.close("eval", leave=standalone, print_line=standalone)
        if "main" in self._display.bars and fn_name(trainer) in (None, "fit"):
            metrics = self._metrics(trainer, pl_module, True)
            if self._display.is_tty():  # redraw the train line with the new metrics
                self._display.update("main", self._display.bars["main"].n, metrics, force=True)
            else:  # the epoch's line shows them
                self._display.set_postfix("main", metrics)
        self.reset_dataloader_idx_tracker()

    # ---- test / predict -----------------------------------------------------------------------
    def _eval_batch_start(self, trainer, description, total_fn, dataloader_idx, attr):
        if not self.is_enabled or not self.has_dataloader_changed(dataloader_idx):
            return
        nb = getattr(trainer, attr, None)
        if isinstance(nb, (list, tuple)) and len(nb) > 1:
            description = f"{description} DataLoader {dataloader_idx}"
        self._display.start("eval", description, total_fn())

    def on_test_start(self, trainer, pl_module):
        self._trainer = trainer
        self.reset_dataloader_idx_tracker()

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._eval_batch_start(
            trainer,
            self.test_description,
            lambda: self.total_test_batches_current_dataloader,
            dataloader_idx,
            "num_test_batches",
        )

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        bar = self._display.bars.get("eval")
        self._update("eval", batch_idx + 1, bar.total if bar else None, trainer, pl_module)

    def on_test_end(self, trainer, pl_module):
        if "eval" in self._display.bars:
            self._display.set_postfix("eval", self.get_metrics(trainer, pl_module))
        self._display.close("eval", leave=True)
        self.reset_dataloader_idx_tracker()

    def on_predict_start(self, trainer, pl_module):
        self._trainer = trainer
        self.reset_dataloader_idx_tracker()

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._eval_batch_start(
            trainer,
            self.predict_description,
            lambda: self.total_predict_batches_current_dataloader,
            dataloader_idx,
            "num_predict_batches",
        )

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        bar = self._display.bars.get("eval")
        if bar is not None and self._should_update(batch_idx + 1, bar.total):
            self._display.update("eval", batch_idx + 1)

    def on_predict_end(self, trainer, pl_module):
        self._display.close("eval", leave=True)
        self.reset_dataloader_idx_tracker()

    def on_exception(self, trainer, pl_module, exception):
        self._display.bars.clear()
        self._display.finish_line()

    def print(self, *args, sep=" ", **kwargs):
        """Print without breaking the bar: finish its line first."""
        self._display.finish_line()
        print(*args, sep=sep, file=kwargs.pop("file", self._display.file), **kwargs)


# ---------------------------------------------------------------------------------------------
# Rich


class _RichDisplay(_TextDisplay):
    """The same bars drawn by ``rich.progress`` (when rich is importable and stderr is a terminal)."""

    def __init__(self, file, mininterval, line_interval, console_kwargs=None):
        super().__init__(file, mininterval, line_interval)
        self._console_kwargs = dict(console_kwargs or {})
        self._progress = None
        self._tasks = {}

    def _ensure(self):
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            kw = dict(self._console_kwargs)
            kw.setdefault("file", self.file)
            console = Console(**kw)
            self._progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[rate]}"),
                TextColumn("{task.fields[postfix]}"),
                console=console,
                auto_refresh=False,
            )
            self._progress.start()
        return self._progress

    def _fields(self, bar):
        rate = bar.rate()
        rate_s = "?it/s" if rate is None else (f"{rate:.2f}it/s" if rate >= 1 else f"{1 / rate:.2f}s/it")
        items = sorted(bar.postfix.items(), key=lambda kv: kv[0] != "duty")
        post = " ".join(f"{k}: {_format_value(k, v)}" for k, v in items)
        return {"rate": rate_s, "postfix": post}

    def start(self, key, desc, total):
        if not self.is_tty():
            return super().start(key, desc, total)
        p = self._ensure()
        bar = self.bars[key] = _Bar(desc, total)
        if key in self._tasks:
            p.remove_task(self._tasks.pop(key))
        self._tasks[key] = p.add_task(desc, total=bar.total, **self._fields(bar))
        p.refresh()
        self._last_draw = time.monotonic()

    def update(self, key, n, postfix=None, force=False):
        if not self.is_tty() or self._progress is None:
            return super().update(key, n, postfix, force)
        bar = self.bars.get(key)
        if bar is None:
            return
        bar.n = n
        if postfix is not None:
            bar.postfix = postfix
        if not self.wants_draw(key, force):
            return
        self._progress.update(self._tasks[key], completed=n, **self._fields(bar))
        self._progress.refresh()
        self._last_draw = time.monotonic()

    def close(self, key, leave, print_line=True):
        if not self.is_tty() or self._progress is None:
            return super().close(key, leave, print_line)
        bar = self.bars.pop(key, None)
        task = self._tasks.pop(key, None)
        if bar is None or task is None:
            return
        if leave:
            self._progress.update(task, completed=bar.n, **self._fields(bar))
        else:
            self._progress.remove_task(task)
        self._progress.refresh()
        if not self._tasks:
            self._progress.stop()
            self._progress = None

    def finish_line(self):
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()
        super().finish_line()


def _rich_available():
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return False
    return True


class RichProgressBar(TQDMProgressBar):
    """``RichProgressBar(refresh_rate=1, leave=False, theme=None, console_kwargs=None)``: drawn with
    ``rich`` when it is importable and stderr is a terminal; otherwise the same output as
    TQDMProgressBar."""

    def __init__(
        self,
        refresh_rate=1,
        leave=False,
        theme=None,
        console_kwargs=None,
        file=None,
        mininterval=0.1,
        line_interval=30.0,
    ):
        self.theme = theme
        self._console_kwargs = console_kwargs
        super().__init__(
            refresh_rate=refresh_rate, leave=leave, file=file, mininterval=mininterval, line_interval=line_interval
        )

    def _make_display(self, file, mininterval, line_interval):
        if _rich_available():
            return _RichDisplay(file, mininterval, line_interval, self._console_kwargs)
        return _TextDisplay(file, mininterval, line_interval)
