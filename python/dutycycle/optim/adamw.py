"""AdamW (decoupled weight decay; torch.optim.AdamW semantics), one fused _C.adamw_step call
per parameter group (per bucket of parameters sharing a step count, normally just one)."""

import dutycycle as dc

from .optimizer import Optimizer


class AdamW(Optimizer):
    # Decoupled decay (the kernel shrinks the weights); Adam sets this False: L2 added to the grad.
    _decoupled_weight_decay = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, *, maximize=False):
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def step(self, closure=None):
        loss = self._closure_loss(closure)
        with dc.no_grad():
            for g in self.param_groups:
                self._step_group(g)
        return loss

    def _step_group(self, g):
        buckets = {}  # step count before this step -> [(param, state)]
        for p in g["params"]:
            if p.grad is None:
                continue
            s = self.state[p]
            if not s:
                s.update(step=0, exp_avg=dc.zeros_like(p), exp_avg_sq=dc.zeros_like(p))
            buckets.setdefault(int(s["step"]), []).append((p, s))
        beta1, beta2 = g["betas"]
        wd, maximize = g["weight_decay"], bool(g["maximize"])
        coupled = wd != 0 and not self._decoupled_weight_decay
        for step, items in buckets.items():
            for _, s in items:
                s["step"] = step + 1
            grads = [p.grad for p, _ in items]
            if coupled:  # torch.optim.Adam: g = (-grad if maximize else grad) + wd * param
                grads = [(-gr if maximize else gr) + p * wd for gr, (p, _) in zip(grads, items)]
            dc._C.adamw_step(
                [p for p, _ in items],
                grads,
                [s["exp_avg"] for _, s in items],
                [s["exp_avg_sq"] for _, s in items],
                step + 1,
                g["lr"],
                beta1,
                beta2,
                g["eps"],
                0.0 if coupled else wd,
                maximize and not coupled,
            )
