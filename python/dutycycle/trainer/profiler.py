"""Profilers with Lightning's names: Trainer(profiler="simple" | "advanced" | a Profiler | None).

The trainer times its real work through `profiler.profile(action)`: every hook it dispatches
(`[Callback]ModelCheckpoint.on_train_batch_end`, `[LightningModule]GAN.training_step`, ...), every
backward and optimizer step through the strategy (`[Strategy]SingleDeviceStrategy.backward`), each
fetch from a dataloader (`[_TrainingEpochLoop].train_dataloader_next`, `[_EvaluationLoop].val_next`)
and each epoch and batch (`run_training_epoch`, `run_training_batch`). At the end of fit/validate/
test/predict the report is printed on rank zero (or written to `dirpath/<stage>-<filename>.txt`).

With profiler=None the trainer uses PassThroughProfiler and does not wrap anything (no cost).
Timings are host wall time (time.perf_counter); on a GPU they measure what the host waited for, as
Lightning's do (no device synchronisation is added).
"""

from __future__ import annotations

import cProfile
import io
import math
import os
import pstats
import time
from collections import defaultdict
from contextlib import contextmanager


class Profiler:
    """Base class: start(action)/stop(action), profile(action) as a context manager, summary()."""

    def __init__(self, dirpath=None, filename=None):
        self.dirpath = None if dirpath is None else os.fspath(dirpath)
        self.filename = filename
        self._stage = None
        self._log_dir = None

    def start(self, action_name):
        raise NotImplementedError

    def stop(self, action_name):
        raise NotImplementedError

    def summary(self):
        raise NotImplementedError

    @contextmanager
    def profile(self, action_name):
        try:
            self.start(action_name)
            yield action_name
        finally:
            self.stop(action_name)

    def setup(self, stage, local_rank=None, log_dir=None):
        self._stage = stage
        self._log_dir = log_dir

    def teardown(self, stage=None):
        pass

    def describe(self):
        """Print the report (or write it to dirpath/<stage>-<filename>.txt)."""
        text = self.summary()
        if not text:
            return
        if self.filename:
            d = self.dirpath or self._log_dir or os.getcwd()
            os.makedirs(d, exist_ok=True)
            name = f"{self._stage}-{self.filename}" if self._stage else self.filename
            if not name.endswith(".txt"):
                name += ".txt"
            with open(os.path.join(d, name), "a") as f:
                f.write(text)
        else:
            print(text)


class PassThroughProfiler(Profiler):
    """Records nothing (profiler=None); the trainer skips its timing wrappers entirely."""

    def start(self, action_name):
        pass

    def stop(self, action_name):
        pass

    def summary(self):
        return ""


class SimpleProfiler(Profiler):
    """Mean, count, total and share of the run's wall time for each action (Lightning's
    SimpleProfiler, `extended=True` columns)."""

    def __init__(self, dirpath=None, filename=None, extended=True):
        super().__init__(dirpath, filename)
        self.current_actions = {}
        self.recorded_durations = defaultdict(list)
        self.extended = extended
        self.start_time = time.perf_counter()

    def start(self, action_name):
        if action_name in self.current_actions:
            raise ValueError(f"Attempted to start {action_name} which has already started.")
        self.current_actions[action_name] = time.perf_counter()

    def stop(self, action_name):
        end = time.perf_counter()
        if action_name not in self.current_actions:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        self.recorded_durations[action_name].append(end - self.current_actions.pop(action_name))

    def report(self):
        """[(action, mean s, calls, total s, % of the wall time since the profiler started)],
        largest share first, and the wall time."""
        wall = time.perf_counter() - self.start_time
        rows = []
        for action, d in self.recorded_durations.items():
            total = math.fsum(d)
            rows.append((action, total / len(d), len(d), total, 100.0 * total / wall if wall > 0 else 0.0))
        rows.sort(key=lambda r: r[3], reverse=True)
        return rows, wall

    def summary(self):
        sep = os.linesep
        title = (f"{self._stage.upper()} " if self._stage else "") + "Profiler Report" + sep
        if not self.recorded_durations:
            return ""
        rows, wall = self.report()
        width = max(len("Action"), len("Total"), *(len(a) for a in self.recorded_durations))

        def line(*cells):
            action, rest = cells[0], cells[1:]
            return sep + f"|  {action:<{width}s}\t|" + "".join(f"  {c:<15}\t|" for c in rest)

        if self.extended:
            header = line("Action", "Mean duration (s)", "Num calls", "Total time (s)", "Percentage %")
            body = line("Total", "-", f"{sum(r[2] for r in rows)}", f"{wall:.5}", "100 %")
            rule = sep + "-" * len(header.expandtabs().strip(sep))
            body += rule
            for a, mean, n, total, pct in rows:
                body += line(a, f"{mean:.5}", f"{n}", f"{total:.5}", f"{pct:.5}")
        else:
            header = line("Action", "Mean duration (s)", "Total time (s)")
            rule = sep + "-" * len(header.expandtabs().strip(sep))
            body = ""
            for a, mean, _, total, _ in sorted(rows, key=lambda r: r[1], reverse=True):
                body += line(a, f"{mean:.5}", f"{total:.5}")
        return title + rule + header + rule + body + rule + sep

    def teardown(self, stage=None):
        self.current_actions = {}


class AdvancedProfiler(Profiler):
    """cProfile per action: the report lists, for each action, the functions by cumulative time
    (`line_count_restriction` of them, as Lightning's AdvancedProfiler)."""

    def __init__(self, dirpath=None, filename=None, line_count_restriction=1.0, dump_stats=False):
        super().__init__(dirpath, filename)
        self.profiled_actions = {}
        self.line_count_restriction = line_count_restriction
        self.dump_stats = dump_stats

    def start(self, action_name):
        pr = self.profiled_actions.get(action_name)
        if pr is None:
            pr = self.profiled_actions[action_name] = cProfile.Profile()
        pr.enable()

    def stop(self, action_name):
        pr = self.profiled_actions.get(action_name)
        if pr is None:
            raise ValueError(f"Attempting to stop recording an action ({action_name}) which was never started.")
        pr.disable()

    def summary(self):
        out = {}
        for action, pr in self.profiled_actions.items():
            s = io.StringIO()
            pstats.Stats(pr, stream=s).strip_dirs().sort_stats("cumulative").print_stats(self.line_count_restriction)
            out[action] = s.getvalue()
        if not out:
            return ""
        title = (f"{self._stage.upper()} " if self._stage else "") + "Profiler Report"
        return title + "".join(f"{os.linesep}Profile stats for: {a}{os.linesep}{t}" for a, t in out.items())

    def teardown(self, stage=None):
        self.profiled_actions = {}


PROFILERS = {"simple": SimpleProfiler, "advanced": AdvancedProfiler}


def build_profiler(profiler):
    """Trainer(profiler=...): None -> PassThroughProfiler; "simple"/"advanced" -> a new one;
    a Profiler instance as is."""
    if profiler is None:
        return PassThroughProfiler()
    if isinstance(profiler, Profiler):
        return profiler
    if isinstance(profiler, str):
        key = profiler.lower()
        if key in PROFILERS:
            return PROFILERS[key]()
        if key in ("pytorch", "xla"):
            raise ValueError(
                f"profiler={profiler!r} is not in dutycycle yet (it needs torch.profiler / XLA); use 'simple' or "
                "'advanced'"
            )
    raise ValueError(
        f"When passing string value for the `profiler` parameter of `Trainer`, it can only be one of "
        f"{sorted(PROFILERS)}; got {profiler!r}"
    )
