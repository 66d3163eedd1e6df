"""Optimizer base: parameter groups, per-parameter state and its (de)serialisation, as torch's.

Subclasses implement step() as one fused _C call per group (per bucket of equal step count);
Python only gathers the lists of tensors.
"""

import copy
from collections import defaultdict

import dutycycle as dc


class _RequiredParameter:
    def __repr__(self):
        return "<required parameter>"


required = _RequiredParameter()


class Optimizer:
    def __init__(self, params, defaults):
        self.defaults = defaults
        self.state = defaultdict(dict)  # param -> {name: tensor | int}
        self.param_groups = []
        if isinstance(params, dc.Tensor):
            raise TypeError(
                "params argument given to the optimizer should be an iterable of Tensors or dicts, but got a Tensor"
            )
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for g in groups:
            self.add_param_group(g)

    def __repr__(self):
        lines = [type(self).__name__ + " ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {g[k]}" for k in sorted(g) if k != "params"]
        return "\n".join(lines) + "\n)"

    def add_param_group(self, param_group):
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, dc.Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(
                "optimizer parameters need to be organized in ordered collections, but the ordering of sets "
                "changes between runs; use a list"
            )
        else:
            params = list(params)
        for p in params:
            if not isinstance(p, dc.Tensor):
                raise TypeError(
                    f"optimizer can only optimize Tensors, but one of the params is {type(p).__name__}"
                )
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        group = dict(param_group, params=params)
        for k, v in self.defaults.items():
            if v is required and k not in group:
                raise ValueError(
                    f"parameter group didn't specify a value of required optimization parameter {k}"
                )
            group.setdefault(k, v)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if len({id(p) for p in params}) != len(params) or seen & {id(p) for p in params}:
            raise ValueError("some parameters appear more than once (in one group or in more than one group)")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none=True):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    with dc.no_grad():
                        p.grad.zero_()

    def step(self, closure=None):
        raise TypeError(f"{type(self).__name__} does not define step()")

    @staticmethod
    def _closure_loss(closure):
        if closure is None:
            return None
        with dc.enable_grad():
            return closure()

    # ---- serialisation ------------------------------------------------------------------------
    def state_dict(self):
        """{'state': {index: per-param state}, 'param_groups': [group options + param indices]}.

        Parameters are numbered in group order, as torch does; state tensors are returned by
        reference (clone them, or save them, before stepping further).
        """
        index, groups = {}, []
        for g in self.param_groups:
            ids = []
            for p in g["params"]:
                index.setdefault(id(p), len(index))
                ids.append(index[id(p)])
            groups.append({**{k: v for k, v in g.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, "
                f"the optimizer has {len(self.param_groups)}"
            )
        for i, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if len(g["params"]) != len(sg["params"]):
                raise ValueError(
                    f"loaded state dict contains a parameter group ({i}) with {len(sg['params'])} parameters "
                    f"that doesn't match the size of the optimizer's group ({len(g['params'])})"
                )
        id_map = {
            sid: p
            for g, sg in zip(self.param_groups, saved_groups)
            for sid, p in zip(sg["params"], g["params"])
        }
        self.state = defaultdict(dict)
        for sid, s in state_dict["state"].items():
            if sid not in id_map:
                continue
            p = id_map[sid]
            self.state[p] = {k: self._cast_state(p, k, v) for k, v in s.items()}
        for g, sg in zip(self.param_groups, saved_groups):
            g.update({k: copy.deepcopy(v) for k, v in sg.items() if k != "params"})

    @staticmethod
    def _cast_state(p, key, value):
        # The optimizer owns its state: copy, onto the param's device; floats to the param's dtype.
        if not isinstance(value, dc.Tensor):
            return copy.deepcopy(value)
        v = value.detach().to(p.device)
        if key != "step" and v.dtype.is_floating_point:
            v = v.to(p.dtype)
        return v.clone()
