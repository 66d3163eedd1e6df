"""The model summary table fit prints at its start (Lightning's ModelSummary), in Lightning's layout:

      | Name    | Type       | Params | Mode  | In sizes | Out sizes
    ---------------------------------------------------------------------
    0 | encoder | Sequential | 50.4 K | train | [2, 784] | [2, 3]
    ---------------------------------------------------------------------
    100 K     Trainable params
    0         Non-trainable params
    100 K     Total params
    0.402     Total estimated model params size (MB)
    7         Modules in train mode
    0         Modules in eval mode

One row per module down to `max_depth` (1: the top-level children). The "In sizes"/"Out sizes"
columns appear when the LightningModule has an `example_input_array`: the summary runs one forward
pass on it (no grad, eval mode, modes restored after) with each listed module's `forward` wrapped
for the pass to record its first input's and its output's shapes. The size estimate counts
parameter bytes (each parameter's numel * element size), as Lightning does.
"""

from __future__ import annotations

import math

import dutycycle as dc

PARAMETER_NUM_UNITS = [" ", "K", "M", "B", "T"]
UNKNOWN_SIZE = "?"


def get_human_readable_count(number):
    """123 -> "123", 1234 -> "1.2 K", 2e6 -> "2.0 M", ... (Lightning's abbreviation)."""
    if number < 0:
        raise ValueError(f"a parameter count must be >= 0, got {number}")
    digits = int(math.floor(math.log10(number)) + 1) if number > 0 else 1
    groups = min(int(math.ceil(digits / 3)), len(PARAMETER_NUM_UNITS))
    scaled = number / 10 ** (3 * (groups - 1))
    unit = PARAMETER_NUM_UNITS[groups - 1]
    if groups == 1 or scaled >= 100:  # whole numbers: "301  ", "150 K"; else one decimal: "2.7 K"
        return f"{int(scaled):,d} {unit}"
    return f"{scaled:,.1f} {unit}"


def get_formatted_model_size(total_model_size):
    return f"{total_model_size:,.3f}"


def _numel(p):
    return int(p.numel())


def _shape_of(x):
    """The shape Lightning shows for a forward argument or output: a list for a tensor, a list of
    those for a tuple/list, "?" otherwise."""
    if isinstance(x, dc.Tensor):
        return list(x.shape)
    if isinstance(x, (list, tuple)):
        return [_shape_of(e) for e in x]
    return UNKNOWN_SIZE


class LayerSummary:
    """One row: a module's type, parameter count, mode and (after the example forward) sizes."""

    def __init__(self, module):
        self._module = module
        self.in_size = UNKNOWN_SIZE
        self.out_size = UNKNOWN_SIZE

    @property
    def layer_type(self):
        return type(self._module).__name__

    @property
    def num_parameters(self):
        return sum(_numel(p) for p in self._module.parameters())

    @property
    def training(self):
        return bool(self._module.training)

    def _wrap_forward(self):
        """Record the shapes of the next call (the example forward) through an instance attribute
        shadowing the class's forward; _unwrap_forward removes it."""
        mod = self._module
        original = mod.forward

        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            first = args[0] if len(args) == 1 else (list(args) if args else next(iter(kwargs.values()), None))
            self.in_size = _shape_of(first)
            self.out_size = _shape_of(out)
            return out

        object.__setattr__(mod, "forward", forward)

    def _unwrap_forward(self):
        self._module.__dict__.pop("forward", None)


class ModelSummary:
    """Lightning's ModelSummary(model, max_depth=1): str() is the table."""

    def __init__(self, model, max_depth=1):
        if not isinstance(max_depth, int) or max_depth < -1:
            raise ValueError(f"`max_depth` can be -1, 0 or > 0, got {max_depth}.")
        self._model = model
        self._max_depth = max_depth
        self._layer_summary = self.summarize()

    @property
    def named_modules(self):
        if self._max_depth == 0:
            return []
        mods = [(n, m) for n, m in self._model.named_modules() if n]
        if self._max_depth > 0:
            mods = [(n, m) for n, m in mods if n.count(".") < self._max_depth]
        return mods

    def summarize(self):
        summary = {name: LayerSummary(mod) for name, mod in self.named_modules}
        example = getattr(self._model, "example_input_array", None)
        if example is not None and summary:
            self._forward_example_input(example, summary)
        return summary

    def _forward_example_input(self, example, summary):
        model = self._model
        modes = {id(m): m.training for m in model.modules()}
        for s in summary.values():
            s._wrap_forward()
        try:
            model.eval()
            with dc.no_grad():
                if isinstance(example, (list, tuple)):
                    model(*example)
                elif isinstance(example, dict):
                    model(**example)
                else:
                    model(example)
        finally:
            for s in summary.values():
                s._unwrap_forward()
            for m in model.modules():
                m.training = modes.get(id(m), m.training)

    @property
    def layer_names(self):
        return list(self._layer_summary)

    @property
    def layer_types(self):
        return [s.layer_type for s in self._layer_summary.values()]

    @property
    def param_nums(self):
        return [s.num_parameters for s in self._layer_summary.values()]

    @property
    def training_modes(self):
        return [s.training for s in self._layer_summary.values()]

    @property
    def in_sizes(self):
        return [s.in_size for s in self._layer_summary.values()]

    @property
    def out_sizes(self):
        return [s.out_size for s in self._layer_summary.values()]

    @property
    def total_parameters(self):
        return sum(_numel(p) for p in self._model.parameters())

    @property
    def trainable_parameters(self):
        return sum(_numel(p) for p in self._model.parameters() if p.requires_grad)

    @property
    def model_size(self):
        """Parameter bytes in MB (1e6 bytes, as Lightning)."""
        return sum(_numel(p) * p.element_size() for p in self._model.parameters()) / 1e6

    @property
    def total_training_modes(self):
        modes = [m.training for n, m in self._model.named_modules() if n]
        return {"train": sum(modes), "eval": len(modes) - sum(modes)}

    def _get_summary_data(self):
        cols = [
            (" ", [str(i) for i in range(len(self._layer_summary))]),
            ("Name", self.layer_names),
            ("Type", self.layer_types),
            ("Params", [get_human_readable_count(n) for n in self.param_nums]),
            ("Mode", ["train" if t else "eval" for t in self.training_modes]),
        ]
        if getattr(self._model, "example_input_array", None) is not None:
            cols.append(("In sizes", [str(s) for s in self.in_sizes]))
            cols.append(("Out sizes", [str(s) for s in self.out_sizes]))
        return cols

    def __str__(self):
        cols = self._get_summary_data()
        total, trainable = self.total_parameters, self.trainable_parameters
        modes = self.total_training_modes
        lines = []
        if self._layer_summary:
            widths = [max(len(h), *(len(v) for v in vals)) for h, vals in cols]
            header = " | ".join(f"{h:<{w}}" for (h, _), w in zip(cols, widths))
            rule = "-" * (sum(widths) + 3 * (len(widths) + 1))  # Lightning's rule length
            lines += [header, rule]
            for i in range(len(cols[0][1])):
                lines.append(" | ".join(f"{vals[i]:<{w}}" for (_, vals), w in zip(cols, widths)))
            lines.append(rule)
        lines += [
            f"{get_human_readable_count(trainable):<10}Trainable params",
            f"{get_human_readable_count(total - trainable):<10}Non-trainable params",
            f"{get_human_readable_count(total):<10}Total params",
            f"{get_formatted_model_size(self.model_size):<10}Total estimated model params size (MB)",
            f"{modes['train']:<10}Modules in train mode",
            f"{modes['eval']:<10}Modules in eval mode",
        ]
        return "\n".join(lines)

    def __repr__(self):
        return str(self)


def summarize(lightning_module, max_depth=1):
    """ModelSummary(lightning_module, max_depth) (Lightning's utilities.model_summary.summarize)."""
    return ModelSummary(lightning_module, max_depth=max_depth)
