"""SGD with momentum, dampening, Nesterov, weight decay and maximize (torch.optim.SGD semantics),
one fused _C.sgd_step call per parameter group."""

import dutycycle as dc

from .optimizer import Optimizer


class SGD(Optimizer):
    def __init__(
        self,
        params,
        lr=1e-3,
        momentum=0.0,
        dampening=0.0,
        weight_decay=0.0,
        nesterov=False,
        *,
        maximize=False,
    ):
        if lr < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
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
        params = [p for p in g["params"] if p.grad is not None]
        if not params:
            return
        lr, momentum = g["lr"], g["momentum"]
        tail = (g["weight_decay"], bool(g["nesterov"]), bool(g["maximize"]))
        if momentum == 0:
            dc._C.sgd_step(params, [p.grad for p in params], [], lr, momentum, g["dampening"], *tail)
            return
        # torch starts a momentum buffer at the (decayed) gradient itself, undamped: a zero buffer
        # updated with dampening=0 gives exactly that, so fresh buffers get a call of their own.
        fresh = [p for p in params if "momentum_buffer" not in self.state[p]]
        for p in fresh:
            self.state[p]["momentum_buffer"] = dc.zeros_like(p)
        fresh_ids = {id(p) for p in fresh}
        older = [p for p in params if id(p) not in fresh_ids]
        for ps, dampening in ((fresh, 0.0), (older, g["dampening"])):
            if ps:
                bufs = [self.state[p]["momentum_buffer"] for p in ps]
                dc._C.sgd_step(ps, [p.grad for p in ps], bufs, lr, momentum, dampening, *tail)
