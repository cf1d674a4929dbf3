"""Adam's update as functions of tensors: in the captured training step, and in the eager one.

:class:`~pyro_vae.infer.training.compiled_step.CompiledSVIStep` records the update inside its
graph (:func:`adam_update_`, the arithmetic of Kingma & Ba 2015, Alg. 1, as ``torch.optim.Adam``
computes it); :class:`~pyro_vae.infer.training.adam.Adam`'s eager step runs
:func:`eager_adam_update_`: torch's fused Adam kernel, one pass over each tensor where the
written-out update takes eight run eagerly (``experiments/bench_adam.py`` times both), and
:func:`adam_update_` where that kernel is missing. Both work on the same state tensors (those
of ``torch.optim.Adam``), so checkpoints of the eager and the compiled step load into each other;
the two paths agree to round-off.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "adam_coefficients",
    "adam_state",
    "adam_update_",
    "clip_gradients",
    "eager_adam_update_",
]


def adam_state(optimizer: torch.optim.Optimizer, params) -> tuple[list, list, list]:
    """Adam's (exp_avg, exp_avg_sq, step) per trainable parameter, created as torch's Adam
    creates them on its first step.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        The optimizer whose ``state`` holds them (:class:`~pyro_vae.infer.training.adam.Adam`).
    params : iterable of torch.Tensor
        Its parameters, in order.

    Returns
    -------
    tuple of three lists of torch.Tensor
    """
    state = optimizer.state
    trainable = [p for p in params if p.requires_grad]
    for p in trainable:
        if not state[p]:
            state[p]["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state[p]["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[p]["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return (
        [state[p]["exp_avg"] for p in trainable],
        [state[p]["exp_avg_sq"] for p in trainable],
        [state[p]["step"] for p in trainable],
    )


def adam_coefficients(optimizer: torch.optim.Optimizer, steps) -> torch.Tensor:
    """Adam's per-parameter scalars of the coming step, (2, P) float64: graph inputs.

    Row 0 is lr / (1 - beta1^t), row 1 sqrt(1 - beta2^t), t the step about to be taken, in
    Python floats as ``torch.optim.Adam`` computes them. As inputs they follow a learning-rate
    scheduler; computed inside the graph, inductor would evaluate the two ``pow`` in every
    iteration of every vectorized Adam loop (measured: 3x slower Adam).

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Its first param group gives lr and the betas.
    steps : list of torch.Tensor
        The step counts of :func:`adam_state`.

    Returns
    -------
    torch.Tensor of shape (2, P)
    """
    group = optimizer.param_groups[0]
    (beta1, beta2), lr = group["betas"], group["lr"]
    return _coefficients(steps, lr, beta1, beta2)


def _coefficients(steps, lr: float, beta1: float, beta2: float) -> torch.Tensor:
    """:func:`adam_coefficients` from the settings themselves."""
    counts = torch.stack(steps).tolist() if steps else []
    # on the parameters' device: a CPU tensor read inside a CUDA graph is a host pointer
    # handed to a GPU kernel (inductor's launcher: "CUDA driver error: invalid argument")
    return torch.tensor(
        [
            [lr / (1 - beta1 ** (t + 1)) for t in counts],
            [math.sqrt(1 - beta2 ** (t + 1)) for t in counts],
        ],
        dtype=torch.float64,
        device=steps[0].device if steps else None,
    )


def clip_gradients(grads: list, clip: float) -> list:
    """``grads`` scaled to a global norm of at most ``clip``, as
    ``torch.nn.utils.clip_grad_norm_`` scales them (None entries kept)."""
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g) for g in grads if g is not None])
    )
    coef = torch.clamp(clip / (norm + 1e-6), max=1.0)
    return [None if g is None else g * coef for g in grads]


def adam_update_(params, grads, m, v, steps, coefs, betas, eps: float, ok) -> None:
    """One Adam step in place on ``params`` and the state ``m``, ``v``, ``steps``, where
    ``ok`` (a 0-dim bool tensor) holds; nothing moves where it does not.

    A parameter whose gradient is None is skipped, as ``torch.optim.Adam`` skips it.
    ``coefs`` is :func:`adam_coefficients`' (2, P) tensor, ``betas`` (beta1, beta2).
    """
    beta1, beta2 = betas
    for i, (p, g, m_, v_, t) in enumerate(zip(params, grads, m, v, steps, strict=True)):
        if g is None:
            continue
        t_new = t + 1
        m_new = m_ + (1 - beta1) * (g - m_)
        v_new = v_ * beta2 + (1 - beta2) * g * g
        denom = (v_new.sqrt() / coefs[1, i]) + eps
        p_new = p - coefs[0, i] * m_new / denom
        p.copy_(torch.where(ok, p_new, p))
        m_.copy_(torch.where(ok, m_new, m_))
        v_.copy_(torch.where(ok, v_new, v_))
        t.copy_(torch.where(ok, t_new, t))


# what torch's fused kernel is told besides the step sizes: the plain Adam of adam_update_
_PLAIN_ADAM = dict(weight_decay=0.0, amsgrad=False, maximize=False)


def eager_adam_update_(params, grads, m, v, steps, group: dict) -> None:
    """One Adam step in place, eagerly, with the settings of the param ``group``.

    Per device and dtype, torch's fused Adam kernel (``torch._fused_adam_``, an operator: what
    ``torch.optim.Adam(fused=True)`` runs, so the arithmetic is torch's bit for bit); where that
    kernel does not exist (a device or dtype without one), :func:`adam_update_`.
    """
    kinds: dict = {}
    for i, p in enumerate(params):
        kinds.setdefault((p.device, p.dtype), []).append(i)
    (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
    for kind in kinds.values():
        part = [[tensors[i] for i in kind] for tensors in (params, grads, m, v, steps)]
        torch._foreach_add_(part[4], 1)  # the fused kernel reads the step it takes
        try:
            torch._fused_adam_(
                *part[:4], [], part[4], lr=lr, beta1=beta1, beta2=beta2, eps=eps, **_PLAIN_ADAM
            )
        except (RuntimeError, NotImplementedError):  # no fused kernel for this device or dtype
            torch._foreach_sub_(part[4], 1)
            coefs = _coefficients(part[4], lr, beta1, beta2)
            ok = torch.ones((), dtype=torch.bool, device=part[0][0].device)
            adam_update_(*part, coefs, (beta1, beta2), eps, ok)
