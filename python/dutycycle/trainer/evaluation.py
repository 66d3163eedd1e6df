"""The no-grad loops: sanity check and validation (called from inside fit), test, predict, and
the validate/test/predict entry points' set-up (checkpoint to load, dataloaders, report).

Hooks go through `Trainer._call_hook`, exceptions through `Trainer._run` (the entry points run
these inside it), batches to the device through `Trainer._transfer_batch`.
"""

from __future__ import annotations

import itertools

import dutycycle as dc

from . import dataloaders as data
from .results import to_float


def run_sanity_check(trainer):
    loaders = data.as_list(data.source(trainer, "val"))
    if not loaders:
        return
    trainer.val_dataloaders = loaders[0] if len(loaders) == 1 else loaders
    trainer._set_flags("sanity_check")
    trainer._call_hook("on_sanity_check_start", module=False)
    n = trainer.num_sanity_val_steps
    limits = [data.num_batches(dl, trainer.limit_val_batches, "limit_val_batches") for dl in loaders]
    limits = limits if n == -1 else [min(n, k) for k in limits]
    trainer.num_sanity_val_batches = limits
    eval_loop(trainer, "validation", loaders, limits)
    trainer._call_hook("on_sanity_check_end", module=False)
    # Lightning drops what the sanity check logged
    trainer._results.reset_stage("validation")
    for k in list(trainer.callback_metrics):
        del trainer.callback_metrics[k]
    trainer._set_flags("train")

def run_validation(trainer):
    loaders = (
        data.as_list(trainer.val_dataloaders)
        if trainer.val_dataloaders is not None
        else data.as_list(data.source(trainer, "val"))
    )
    if not loaders:
        return
    trainer.val_dataloaders = loaders[0] if len(loaders) == 1 else loaders
    trainer.num_val_batches = [data.num_batches(dl, trainer.limit_val_batches, "limit_val_batches") for dl in loaders]
    trainer._set_flags("validate")
    eval_loop(trainer, "validation", loaders, trainer.num_val_batches)

def eval_loop(trainer, kind, loaders, limits):
    """validation / test: eval mode, no grad, the step on each batch, epoch metrics reduced and
    logged at the end. Returns [{metric: float}] per dataloader (what validate()/test() return)."""
    m = trainer.lightning_module
    duty = trainer.duty_cycle
    step_name = f"{kind}_step"
    trainer._results.reset_stage(kind)
    trainer._results.stage = kind
    trainer._call_hook(f"on_{kind}_model_eval", callbacks=False)
    trainer._call_hook(f"on_{kind}_start")
    trainer._call_hook(f"on_{kind}_epoch_start")
    multi = len(loaders) > 1
    next_action = f"[_EvaluationLoop].{'val' if kind == 'validation' else kind}_next"
    with dc.no_grad():
        for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            trainer._results.dataloader_idx = dl_idx if multi else None
            extra = (dl_idx,) if multi else ()
            it = iter(loader)
            batch_idx = 0
            while batch_idx < limit:
                duty.begin("data_wait")
                try:
                    batch = trainer._timed(next_action, next, it)
                except StopIteration:
                    duty.end()
                    break
                batch = trainer._transfer_batch(m, batch, dl_idx)
                duty.end()
                trainer._results.batch = batch
                trainer._call_hook(f"on_{kind}_batch_start", batch, batch_idx, *extra)
                duty.begin("compute")
                out = trainer._call_step(step_name, batch, batch_idx, *extra)
                duty.end()
                trainer._call_hook(f"on_{kind}_batch_end", out, batch, batch_idx, *extra)
                batch_idx += 1
    trainer._results.dataloader_idx = None
    trainer._call_hook(f"on_{kind}_epoch_end")
    epoch_metrics = trainer._results.epoch_end(kind)
    if not trainer.sanity_checking:
        step = max(trainer.global_step - 1, 0) if trainer.state.fn == "fit" else trainer.global_step
        trainer._log_metrics(epoch_metrics, step=step)
    trainer._call_hook(f"on_{kind}_end")
    trainer._call_hook(f"on_{kind}_model_train", callbacks=False)
    trainer._results.stage = "train"
    per_dl = []
    for i in range(len(loaders)):
        suffix = f"/dataloader_idx_{i}"
        d = {}
        for k, v in epoch_metrics.items():
            if multi and not k.endswith(suffix) and "/dataloader_idx_" in k:
                continue
            d[k] = to_float(v)
        per_dl.append(d)
    return per_dl


def eval_impl(trainer, fn, model, dataloaders, ckpt_path, verbose, datamodule):
    kind = "validation" if fn == "validate" else "test"
    if model is None and ckpt_path is None and trainer.lightning_module is not None and trainer.state.fn:
        ckpt_path = None  # use the weights in memory (Lightning would pick "best"; we keep it simple)
    trainer._attach(model, datamodule, fn)
    m = trainer.lightning_module
    if not data.has_step(m, f"{kind}_step"):
        raise ValueError(f"No `{kind}_step()` method defined to run `Trainer.{fn}`")
    setattr(trainer, "_val_source" if kind == "validation" else "_test_source", dataloaders)
    trainer._setup_stage(fn)
    if ckpt_path is not None:
        ckpt = trainer._load_checkpoint(ckpt_path, fn)
        if ckpt is not None:
            trainer._restore_module_and_callbacks(ckpt)
    loaders = data.as_list(data.source(trainer, "val" if kind == "validation" else "test"))
    if not loaders:
        raise ValueError(
            f"No `{'val' if kind == 'validation' else 'test'}_dataloader()` method defined and no "
            f"dataloaders passed to `Trainer.{fn}`"
        )
    limit = trainer.limit_val_batches if kind == "validation" else trainer.limit_test_batches
    limits = [
        data.num_batches(dl, limit, "limit_val_batches" if kind == "validation" else "limit_test_batches")
        for dl in loaders
    ]
    if kind == "validation":
        trainer.val_dataloaders, trainer.num_val_batches = (loaders[0] if len(loaders) == 1 else loaders), limits
    else:
        trainer.test_dataloaders, trainer.num_test_batches = (loaders[0] if len(loaders) == 1 else loaders), limits
    trainer.duty_cycle.start()
    trainer._set_flags(fn)
    out = eval_loop(trainer, kind, loaders, limits)
    trainer.duty_cycle.stop()
    trainer._set_flags(None)
    for lg in trainer.loggers:
        if hasattr(lg, "save"):
            lg.save()
    trainer._teardown_stage(fn)
    if verbose and trainer.is_global_zero:
        for i, d in enumerate(out):
            if d:
                print(f"{fn} metrics (dataloader {i}): " + ", ".join(f"{k}={v:.6g}" for k, v in sorted(d.items())))
    return out

def predict_impl(trainer, model, dataloaders, datamodule, ckpt_path, return_predictions):
    trainer._attach(model, datamodule, "predict")
    m = trainer.lightning_module
    trainer._predict_source = dataloaders
    trainer._setup_stage("predict")
    if ckpt_path is not None:
        ckpt = trainer._load_checkpoint(ckpt_path, "predict")
        if ckpt is not None:
            trainer._restore_module_and_callbacks(ckpt)
    loaders = data.as_list(data.source(trainer, "predict"))
    if not loaders:
        raise ValueError("No `predict_dataloader()` method defined and no dataloaders passed to `Trainer.predict`")
    trainer.predict_dataloaders = loaders[0] if len(loaders) == 1 else loaders
    limits = [data.num_batches(dl, trainer.limit_predict_batches, "limit_predict_batches") for dl in loaders]
    trainer.num_predict_batches = limits
    step = "predict_step" if data.has_step(m, "predict_step") else None
    trainer._set_flags("predict")
    trainer.duty_cycle.start()
    trainer._call_hook("on_predict_model_eval", callbacks=False)
    trainer._call_hook("on_predict_start")
    trainer._call_hook("on_predict_epoch_start")
    multi = len(loaders) > 1
    results = []
    with dc.no_grad():
        for dl_idx, (loader, limit) in enumerate(zip(loaders, limits)):
            preds = []
            extra = (dl_idx,) if multi else ()
            it = iter(loader)
            for batch_idx in range(limit) if limit != float("inf") else itertools.count():
                try:
                    batch = trainer._timed("[_PredictionLoop].predict_next", next, it)
                except StopIteration:
                    break
                batch = trainer._transfer_batch(m, batch, dl_idx)
                trainer._call_hook("on_predict_batch_start", batch, batch_idx, *extra)
                if step is None:  # no predict_step: the module's forward on the batch
                    prev = m.__dict__.get("_current_fx")
                    object.__setattr__(m, "_current_fx", "predict_step")
                    try:
                        out = m._default_predict_step(batch, batch_idx, *extra)
                    finally:
                        object.__setattr__(m, "_current_fx", prev)
                else:
                    out = trainer._call_step("predict_step", batch, batch_idx, *extra)
                trainer._call_hook("on_predict_batch_end", out, batch, batch_idx, *extra)
                if return_predictions is not False:
                    preds.append(out)
            results.append(preds)
    trainer._call_hook("on_predict_epoch_end")
    trainer._call_hook("on_predict_end")
    trainer.duty_cycle.stop()
    trainer._set_flags(None)
    trainer._teardown_stage("predict")
    if return_predictions is False:
        return None
    return results[0] if len(results) == 1 else results
