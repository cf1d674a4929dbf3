"""The one Adam of both training steps: torch's state and checkpoints, none of torch's wrappers.

:class:`Adam` holds the state of ``torch.optim.Adam`` (per parameter ``step``, ``exp_avg``,
``exp_avg_sq``; the same param groups), so its ``state_dict`` is torch's and checkpoints of
either load into the other. Both training steps update that state: the compiled step inside its
graph, by :func:`~pyro_vae.infer.training.functional_adam.adam_update_`; the eager step by
:meth:`Adam.step`, which runs :func:`~pyro_vae.infer.training.functional_adam.
eager_adam_update_` (torch's fused Adam kernel, the arithmetic of ``torch.optim.Adam(fused=
True)`` bit for bit, and the same update written out where no fused kernel exists).

Why not ``torch.optim.Adam`` itself: its ``add_param_group``, ``zero_grad``, ``state_dict``,
``load_state_dict`` and ``step`` import ``torch._dynamo`` on their first call (about 2 s,
``experiments/bench_startup.py``), more than a short run trains. :class:`Adam` is a
``torch.optim.Optimizer`` (learning-rate schedulers take it) that defines those methods itself,
so none of them imports Dynamo, and no class of torch's is changed.
"""

from __future__ import annotations

import torch

from pyro_vae.infer.training.functional_adam import adam_state, eager_adam_update_

__all__ = ["Adam"]

# the hyperparameters of torch.optim.Adam's param groups, at the values this Adam implements:
# a checkpoint's groups read as torch's (the "fused" kernel is the one the eager step runs)
_DEFAULTS = dict(
    weight_decay=0,
    amsgrad=False,
    maximize=False,
    foreach=None,
    capturable=False,
    differentiable=False,
    fused=True,
    decoupled_weight_decay=False,
)
# the settings this Adam does not implement, at the values it does
_UNSUPPORTED = dict(weight_decay=0, amsgrad=False, maximize=False, decoupled_weight_decay=False)


class Adam(torch.optim.Optimizer):
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam(fused=True)`` computes it, without Dynamo.

    Parameters
    ----------
    params : iterable of torch.Tensor or of dict
        Leaf tensors to optimize, or param groups.
    lr : float
        Learning rate.
    betas : tuple of float
        The decay rates of the first and second moment estimates.
    eps : float
        Added to the denominator.

    Raises
    ------
    ValueError
        For a learning rate that is not positive, an empty parameter list, or a tensor in two
        groups.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, **_DEFAULTS))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group of parameters, its missing settings taken from the defaults."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        if any(not p.is_leaf for p in params):
            raise ValueError("Adam optimizes leaf tensors only: pass parameters, not results")
        known = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(p) in known for p in params) or len({id(p) for p in params}) < len(params):
            raise ValueError("a parameter appears twice in Adam's parameter groups")
        self.param_groups.append({**self.defaults, **param_group, "params": params})

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (``None``, or zeros with ``set_to_none=False``)."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.detach_().zero_()

    @torch.no_grad()
    def step(self, closure=None):
        """One Adam step on every parameter that has a gradient (``closure``: as torch's)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                m, v, steps = adam_state(self, params)
                grads = [p.grad for p in params]
                eager_adam_update_(params, grads, m, v, steps, group)
        return loss

    def state_dict(self) -> dict:
        """``{"state": {index: {...}}, "param_groups": [...]}``, as ``torch.optim.Adam``'s:
        parameters named by their index over all groups, in order."""
        index, groups = {}, []
        for group in self.param_groups:
            ids = list(range(len(index), len(index) + len(group["params"])))
            index.update(zip(map(id, group["params"]), ids, strict=True))
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` output (also ``torch.optim.Adam``'s), each tensor copied
        to its parameter's device (and dtype; ``step`` float32).

        Raises
        ------
        ValueError
            When the groups differ in number or size from this optimizer's, or a group
            uses a setting this Adam does not implement (weight decay, amsgrad, maximize).
        """
        saved = state_dict["param_groups"]
        sizes = [len(g["params"]) for g in self.param_groups]
        if sizes != [len(g["params"]) for g in saved]:
            raise ValueError(
                f"the saved optimizer has parameter groups of {[len(g['params']) for g in saved]}"
                f" parameters, this one of {sizes}: it belongs to another model"
            )
        for group in saved:
            odd = sorted(k for k, v in _UNSUPPORTED.items() if group.get(k, v) != v)
            if odd:
                raise ValueError(f"the saved optimizer uses {', '.join(odd)}, which Adam does not")
        params = {}
        for group, saved_group in zip(self.param_groups, saved, strict=True):
            params.update(zip(saved_group["params"], group["params"], strict=True))
        self.state.clear()
        for i, values in state_dict["state"].items():
            p = params[i]
            self.state[p] = {k: _placed(k, value, p) for k, value in values.items()}
        self.param_groups = [
            {**s, "params": g["params"]} for g, s in zip(self.param_groups, saved, strict=True)
        ]


def _placed(key: str, value, param: torch.Tensor) -> torch.Tensor:
    """A saved state tensor, copied to ``param``'s device: ``step`` as float32 (where the fused
    kernel reads it), the moments in ``param``'s dtype."""
    dtype = torch.float32 if key == "step" else param.dtype
    return torch.as_tensor(value).to(device=param.device, dtype=dtype, copy=True)
