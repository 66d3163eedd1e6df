"""Adam (torch.optim.Adam semantics: weight decay as an L2 term added to the gradient, unlike
AdamW's decoupled decay). The update is the same fused _C.adamw_step call as AdamW's, with the
kernel's decoupled decay off; a non-zero weight_decay first forms grad + weight_decay * param
(one extra elementwise op per parameter)."""

import dutycycle as dc

from .adamw import AdamW


class Adam(AdamW):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)

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
        for step, items in buckets.items():
            for _, s in items:
                s["step"] = step + 1
            grads = [p.grad for p, _ in items]
            if wd != 0:  # torch: g = (-grad if maximize else grad) + wd * param
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
                0.0,
                maximize and wd == 0,
            )
