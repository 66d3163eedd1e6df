"""Adam (torch.optim.Adam semantics: weight decay as an L2 term added to the gradient, unlike
AdamW's decoupled decay). Same fused _C.adamw_step call as AdamW, with the kernel's decoupled decay
off; a non-zero weight_decay first forms grad + weight_decay * param (one elementwise op per
parameter)."""

from .adamw import AdamW


class Adam(AdamW):
    _decoupled_weight_decay = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize)
