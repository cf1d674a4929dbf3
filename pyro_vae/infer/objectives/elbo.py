"""The ELBO objectives: -ELBO per datapoint for any model/guide pair.

Every objective follows the contract of :mod:`pyro_vae.infer.objectives.base`: called as
``objective(model, guide, x, *args, num_data=None, **kwargs)``, it returns a differentiable
estimate of -ELBO per datapoint (nats) of the batch ``x``, where ``num_data`` is the size N of
the whole training set. :func:`~pyro_vae.infer.objectives.registry.make_objective` builds the
built-in ones by name (the registry) or from a ``pyro.infer.ELBO``.

The fast path, :class:`FastTraceELBO`, computes exactly the single-particle Trace_ELBO estimate

    ELBO(x) = log p_theta(x, z) - log q_phi(z | x),  z ~ q_phi(z | x)  (Kingma & Welling 2014)

but records log-densities as the sites run (:func:`pyro_vae.infer.pair.record.run_pair`)
instead of building two full ``Trace`` objects, so a step costs little more than the networks
themselves (Pyro's ``SVI`` with ``Trace_ELBO`` runs at 0.73x of a hand-written loop,
``SVIStep`` with this objective at 1.0x: ``experiments/bench_train.py``). It requires every
guide site to be reparameterized; ``"trace"`` falls back to Pyro's own
``Trace_ELBO`` otherwise.

Discrete latents: ``"enum"`` is Pyro's ``TraceEnum_ELBO``, which sums every guide site marked
``infer={"enumerate": "parallel"}`` (``pyro.infer.config_enumerate``) out exactly instead of
sampling it; its ``max_plate_nesting`` is found by tracing the pair once
(:func:`~pyro_vae.infer.pair.layout.max_plate_nesting`), or pass
``TraceEnum_ELBO(max_plate_nesting=k)`` yourself.

Minibatches: every site inside the data plate is scaled by N / full_size
(:func:`pyro_vae.infer.pair.sites.data_scale`), which makes the loss an unbiased estimate of the
full-data -ELBO even when a model also has global sites. The returned loss is that estimate
divided by N: -ELBO per datapoint, in nats.
"""

from __future__ import annotations

import warnings

import torch
from pyro.infer import ELBO, JitTrace_ELBO, TraceEnum_ELBO
from pyro.infer.trace_mean_field_elbo import JitTraceMeanField_ELBO
from pyro.infer.traceenum_elbo import JitTraceEnum_ELBO
from pyro.infer.tracegraph_elbo import JitTraceGraph_ELBO
from pyro.poutine.messenger import Messenger

from pyro_vae.infer.objectives.base import Objective
from pyro_vae.infer.pair.record import run_pair
from pyro_vae.infer.pair.sites import DATA_PLATE, data_scale

__all__ = ["FastTraceELBO", "PyroELBO"]

# Pyro's ELBOs that trace one batch shape with torch.jit (and cannot be captured again)
_JIT_ELBOS = (JitTrace_ELBO, JitTraceGraph_ELBO, JitTraceEnum_ELBO, JitTraceMeanField_ELBO)


def _total(terms) -> torch.Tensor | float:
    return sum((site.log_prob_sum() for site in terms), 0.0)


class FastTraceELBO(Objective):
    """Single-particle, reparameterized Trace_ELBO as -ELBO per datapoint (nats).

    Estimates -[log p(x, z) - log q(z | x)] with z ~ q(z | x) drawn by reparameterization
    (Kingma & Welling 2014, Secs. 2.3-2.4): the same estimator and gradients as
    ``pyro.infer.Trace_ELBO`` for fully reparameterized guides.

    Parameters
    ----------
    data_plate : str
        Name of the data plate.
    """

    def __init__(self, data_plate: str = DATA_PLATE):
        self.data_plate = data_plate

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """-ELBO per datapoint of the batch ``x``, differentiable in every parameter.

        Parameters
        ----------
        model, guide : callable
            A pair following the site convention (docs/design.md), called as
            ``f(x, *args, **kwargs)``.
        x : torch.Tensor of shape (B, ...)
            A minibatch of B datapoints.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Size N of the whole training set, for minibatch scaling (None: ``x`` is all of it).

        Returns
        -------
        torch.Tensor of shape ()
            -ELBO per datapoint, in nats: the minibatch estimate of the full-data -ELBO,
            divided by N.
        """
        n = num_data or x.shape[0]
        guide_sites, model_sites = run_pair(
            model, guide, x, *args, data_plate=self.data_plate, num_data=num_data, **kwargs
        )
        return (_total(guide_sites.values()) - _total(model_sites.values())) / n


class _ScaleDataPlate(Messenger):
    """Multiplies the scale of data-plate sites by N / full_size, for Pyro's own ELBOs."""

    def __init__(self, data_plate: str, num_data: int | None):
        super().__init__()
        self.data_plate, self.num_data = data_plate, num_data

    def _pyro_sample(self, msg):
        factor = data_scale(msg, self.data_plate, self.num_data)
        if factor != 1.0:
            msg["scale"] = msg["scale"] * factor


class PyroELBO(Objective):
    """Any ``pyro.infer.ELBO`` (Trace, TraceMeanField, Jit...) as -ELBO per datapoint (nats).

    Parameters
    ----------
    elbo : pyro.infer.ELBO
        The estimator; its ``differentiable_loss`` runs on the pair with every data-plate
        site scaled for the minibatch.
    data_plate : str
        Name of the data plate.
    """

    def __init__(self, elbo: ELBO, data_plate: str = DATA_PLATE):
        self.elbo, self.data_plate = elbo, data_plate
        self.fixed_batch_shape = isinstance(elbo, _JIT_ELBOS)  # traced for one batch shape

    def __repr__(self) -> str:
        return f"PyroELBO({type(self.elbo).__name__})"

    def capture_blocker(self) -> str | None:
        """Pyro's JIT ELBOs trace with TorchScript themselves; the others can be captured."""
        if self.fixed_batch_shape:
            return f"{type(self.elbo).__name__} (Pyro's own TorchScript tracing)"
        return None

    def __call__(self, model, guide, x, *args, num_data: int | None = None, **kwargs):
        """-ELBO per datapoint of the batch ``x``, differentiable in every parameter.

        Parameters
        ----------
        model, guide : callable
            A pair following the site convention (docs/design.md), called as
            ``f(x, *args, **kwargs)``.
        x : torch.Tensor of shape (B, ...)
            A minibatch of B datapoints.
        *args, **kwargs
            Passed on to ``model`` and ``guide``.
        num_data : int, optional
            Size N of the whole training set, for minibatch scaling (None: ``x`` is all of it).

        Returns
        -------
        torch.Tensor of shape ()
            -ELBO per datapoint, in nats: the minibatch estimate of the full-data -ELBO,
            divided by N.
        """
        n = num_data or x.shape[0]
        scale = _ScaleDataPlate(self.data_plate, num_data)
        with warnings.catch_warnings():
            # Pyro's JIT ELBOs use torch.jit.trace, which torch now flags as deprecated
            warnings.filterwarnings("ignore", message="`torch.jit.trace` is deprecated")
            if isinstance(self.elbo, TraceEnum_ELBO) and not torch.is_grad_enabled():
                # its differentiable_loss refuses a loss without gradients (validation)
                loss = torch.as_tensor(
                    self.elbo.loss(scale(model), scale(guide), x, *args, **kwargs)
                )
            else:
                loss = self.elbo.differentiable_loss(scale(model), scale(guide), x, *args, **kwargs)
        return loss / n
