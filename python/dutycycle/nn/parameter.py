"""nn.Parameter: a leaf Tensor that a Module registers as a trainable weight.

Parameter is a subclass of dutycycle.Tensor so ``isinstance(p, nn.Parameter)`` works; the engine's
``Tensor._make_subclass(cls, data, requires_grad)`` builds it as a new leaf sharing ``data``'s
storage (no copy).
"""

import dutycycle as dc


class Parameter(dc.Tensor):
    def __new__(cls, data=None, requires_grad=True):
        if data is None:
            data = dc.empty(0)
        if not isinstance(data, dc.Tensor):
            raise TypeError(f"Parameter data must be a Tensor, got {type(data).__name__}")
        return dc.Tensor._make_subclass(cls, data.detach(), requires_grad)

    def __init__(self, data=None, requires_grad=True):
        # All state is set by _make_subclass in __new__; the C base must not see the arguments.
        pass

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __deepcopy__(self, memo):
        if id(self) not in memo:
            memo[id(self)] = type(self)(self.detach().clone(), self.requires_grad)
        return memo[id(self)]
