"""The conditional VAE (pyro_vae.models.conditional): structure, hand-computed ELBO, labels.

The evidence and diagnostic tools on it are run by tests/test_contract.py; here, what is
particular to a pair called with labels ``(x, y)``.
"""

import math
import re

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO

from pyro_vae.infer.evidence.importance import log_evidence
from pyro_vae.models.conditional import CVAE, check_labels, concat

N, D, C, M = 5, 12, 4, 3


def small_cvae(**kwargs):
    torch.manual_seed(0)
    return CVAE(D, num_classes=C, latent_dim=M, hidden=(8,), **kwargs)


def batch():
    return torch.bernoulli(torch.rand(N, D)), torch.tensor([0, 1, 2, 3, 1])


def traces(cvae, x, y):
    guide_tr = poutine.trace(cvae.guide).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(cvae.model, trace=guide_tr)).get_trace(x, y)
    return guide_tr, model_tr


def test_trace_structure():
    cvae, (x, y) = small_cvae(), batch()
    guide_tr, model_tr = traces(cvae, x, y)
    assert [n for n, s in guide_tr.nodes.items() if s["type"] == "sample"] == ["data", "z"]
    assert [n for n, s in model_tr.nodes.items() if s["type"] == "sample"] == ["data", "z", "x"]
    for site in (guide_tr.nodes["z"], model_tr.nodes["z"], model_tr.nodes["x"]):
        assert [f.name for f in site["cond_indep_stack"]] == ["data"]
        assert site["fn"].batch_shape == (N,) and site["fn"].event_dim == 1
    assert guide_tr.nodes["z"]["fn"].has_rsample


def test_elbo_matches_hand_computation(float64):
    """log p(x|z, y) + log N(z; 0, I) - log q(z|x, y), networks fed [x, e_y] and [z, e_y]."""
    cvae, (x, y) = small_cvae(), batch()
    guide_tr, model_tr = traces(cvae, x, y)
    z, e_y = guide_tr.nodes["z"]["value"], F.one_hot(y, C).double()
    loc, scale = cvae.encoder(torch.cat([x, e_y], -1))
    logits = cvae.decoder(torch.cat([z, e_y], -1))
    log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_qz = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    expected = (log_px + log_pz - log_qz).sum()
    got = model_tr.log_prob_sum() - guide_tr.log_prob_sum()
    # rtol 1e-10: float64 round-off of some 60 terms summed in another order
    assert torch.allclose(got, expected, rtol=1e-10), (got.item(), expected.item())


def test_the_label_changes_the_likelihood_and_gradients_reach_every_parameter():
    cvae, (x, y) = small_cvae(), batch()
    pyro.set_rng_seed(1)
    with torch.no_grad():
        a = log_evidence(cvae.model, cvae.guide, x, y, num_samples=200).log_px
        b = log_evidence(cvae.model, cvae.guide, x, (y + 1) % C, num_samples=200).log_px
    assert not torch.allclose(a, b), "log p(x|y) does not depend on y"
    loss = Trace_ELBO().differentiable_loss(cvae.model, cvae.guide, x, y)
    loss.backward()
    for name, p in cvae.named_parameters():
        # > 0: a parameter the loss does not reach has grad None or exactly zero
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


def test_vectorized_particles_and_helpers():
    cvae, (x, y) = small_cvae(), batch()
    with pyro.plate("particles", 7, dim=-2):
        guide_tr, model_tr = traces(cvae, x, y)
    assert guide_tr.nodes["z"]["value"].shape == (7, N, M)
    assert model_tr.nodes["x"]["fn"].batch_shape == (7, N)
    assert cvae.sample_per_class(3).shape == (C * 3, D)
    assert cvae.analogies(x, y).shape == (N, C, D)
    assert cvae.reconstruct(x, y).shape == (N, D)
    assert CVAE(**cvae.config).config == cvae.config
    assert concat(torch.zeros(N, 2), torch.ones(C, 1, 3)).shape == (C, N, 5)


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0, 1, 2, 3, 4]), r"labels must lie in 0\.\.3, got 4"),
        (torch.tensor([0, -1, 2, 3, 1]), r"labels must lie in 0\.\.3, got -1"),
        (torch.tensor([0, 1, 2]), "y holds 3 labels but x holds 5 datapoints"),
        (torch.zeros(N), r"must be integers \(torch.long\)"),
        (torch.zeros(N, 1).long(), r"must be a tensor of shape \(N,\)"),
        (None, "this model is conditional: pass the labels y"),
    ],
)
def test_bad_labels_are_one_clear_line(labels, match):
    cvae, (x, _) = small_cvae(), batch()
    with pytest.raises(ValueError, match=match):
        check_labels(labels, N, C)
    # through a generic tool (a conditional pair evaluated without labels, or with bad ones),
    # the first line of the error is ours (Pyro appends the trace's shapes below it)
    args = () if labels is None else (labels,)
    with pytest.raises(ValueError) as err:
        log_evidence(cvae.model, cvae.guide, x, *args, num_samples=2)
    assert re.search(match, str(err.value).splitlines()[0]), str(err.value)


def test_constructor_refuses_bad_arguments():
    with pytest.raises(ValueError, match="num_classes must be at least 2"):
        CVAE(D, num_classes=1)
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        CVAE(D, num_classes=0)
    with pytest.raises(ValueError, match="latent_dim"):
        CVAE(D, latent_dim=0)
