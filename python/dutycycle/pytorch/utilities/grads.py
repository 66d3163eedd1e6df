"""grad_norm (lightning.pytorch.utilities.grads): the p-norm of each parameter's gradient and of
all of them together, with Lightning's keys, for logging in on_before_optimizer_step:

    def on_before_optimizer_step(self, optimizer):
        self.log_dict(grad_norm(self, norm_type=2))

Keys: "grad_{p}_norm{sep}{parameter name}" per parameter with a gradient and "grad_{p}_norm_total"
(p as a float: "grad_2.0_norm/layer.weight"). Values are 0-d tensors: no host round-trip here;
the logger reads them when it writes."""

import dutycycle as dc


def grad_norm(module, norm_type, group_separator="/"):
    """{key: norm} for module's parameters with a .grad; norm_type a positive number or "inf".
    The total is the norm of the per-parameter norms, i.e. of all gradients as one vector."""
    norm_type = float(norm_type)
    if not norm_type > 0:
        raise ValueError(f"`norm_type` must be a positive number or 'inf' (infinity norm). Got {norm_type}")
    norms = {
        f"grad_{norm_type}_norm{group_separator}{name}": p.grad.detach().norm(norm_type)
        for name, p in module.named_parameters()
        if p.grad is not None
    }
    if norms:
        norms[f"grad_{norm_type}_norm_total"] = dc.stack(list(norms.values())).norm(norm_type)
    return norms
