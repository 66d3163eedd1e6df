"""ModelSummary: prints the model summary table when fit starts (Lightning's default callback;
Trainer(enable_model_summary=False) leaves it out). The table is dutycycle.trainer.summary's."""

from .callback import Callback


class ModelSummary(Callback):
    """Print ``summarize(pl_module, max_depth)`` on global rank zero at the start of fit."""

    def __init__(self, max_depth=1, **summarize_kwargs):
        self._max_depth = max_depth
        self._summarize_kwargs = summarize_kwargs

    def on_fit_start(self, trainer, pl_module):
        if not self._max_depth or not trainer.is_global_zero:
            return
        print(self._summary(trainer, pl_module))

    def _summary(self, trainer, pl_module):
        from ..trainer.summary import summarize

        return summarize(pl_module, max_depth=self._max_depth)
