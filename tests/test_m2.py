"""The M2 model (pyro_vae.models.m2): sites, enumeration, the classifier, and its evidence
log p(x), estimated with y drawn from q(y|x), against the exact sum over labels.

The generic tools on it (labelled and unlabelled) are run by tests/test_contract.py.
"""

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine

from pyro_vae.infer.evidence.importance import log_evidence
from pyro_vae.infer.objectives.elbo import make_objective
from pyro_vae.models.m2 import M2

N, D, C, M = 5, 6, 10, 2


def small_m2():
    torch.manual_seed(0)
    return M2(D, num_classes=C, latent_dim=M, hidden=(8,))


def images():
    return torch.bernoulli(torch.rand(N, D, generator=torch.Generator().manual_seed(3)))


def test_y_is_observed_with_labels_and_enumerated_without():
    m2, x = small_m2(), images()
    labelled = poutine.trace(m2.guide).get_trace(x, torch.arange(N))
    assert "y" not in labelled.nodes and "z" in labelled.nodes
    model = poutine.trace(m2.model).get_trace(x, torch.arange(N))
    assert model.nodes["y"]["is_observed"]
    unlabelled = poutine.trace(m2.guide).get_trace(x)
    site = unlabelled.nodes["y"]
    assert not site["is_observed"] and site["infer"]["enumerate"] == "parallel"
    # under enumeration y takes all C values at once, left of the data plate
    enum = poutine.trace(poutine.enum(m2.guide, first_available_dim=-2)).get_trace(x)
    assert enum.nodes["y"]["value"].shape == (C, 1)
    assert enum.nodes["z"]["value"].shape == (C, N, M)


def test_enumerated_elbo_is_the_q_weighted_sum_of_labelled_elbos(float64):
    # -U(x) = -sum_y q(y|x) [log p(x, y, z_y) - log q(z_y|x, y) - log q(y|x)] (Kingma et al.
    # 2014, eq. 7) with one z_y ~ q(z|x, y) per label: the same seed makes the enumerated
    # guide draw the same (C, N, M) codes in the objective and in the hand computation
    m2, x = small_m2(), images()
    objective = make_objective("enum", m2.model, m2.guide, x)
    pyro.set_rng_seed(5)
    enumerated = objective(m2.model, m2.guide, x)
    pyro.set_rng_seed(5)
    z = poutine.trace(poutine.enum(m2.guide, first_available_dim=-2)).get_trace(x)
    z = z.nodes["z"]["value"]  # (C, N, M): z[c] drawn given y = c
    e_y = torch.eye(C)[:, None, :].expand(C, N, C)
    loc, scale = m2.encoder(torch.cat([x.expand(C, N, D), e_y], -1))
    logits = m2.decoder(torch.cat([z, e_y], -1))
    log_px = -F.binary_cross_entropy_with_logits(logits, x.expand(C, N, D), reduction="none")
    normal = -0.5 * math.log(2 * math.pi)
    log_pz = (-0.5 * z**2 + normal).sum(-1)
    log_qz = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() + normal).sum(-1)
    log_joint = log_px.sum(-1) + log_pz - math.log(C) - log_qz  # (C, N)
    log_q_y = m2.classifier(x).log_softmax(-1).T  # (C, N)
    elbo = (log_q_y.exp() * (log_joint - log_q_y)).sum(0)
    # float64 round-off of sums over 10 labels and 6 pixels
    torch.testing.assert_close(enumerated, -elbo.mean(), rtol=1e-10, atol=0)


def test_evidence_with_sampled_labels_equals_the_exact_sum_over_labels(float64):
    """log p(x) from y ~ q(y|x), z ~ q(z|x, y) against logsumexp_y log p(x, y), where each
    log p(x, y) = log p(y) + log p(x|y) is itself estimated with y observed."""
    m2, x = small_m2(), images()
    direct = log_evidence(m2.model, m2.guide, x, num_samples=40000)
    per_label = [
        log_evidence(m2.model, m2.guide, x, torch.full((N,), c), num_samples=8000) for c in range(C)
    ]
    log_pxy = torch.stack([r.log_px for r in per_label])  # (C, N)
    summed = log_pxy.logsumexp(0)
    # delta method: se of logsumexp_y a_y is sqrt(sum_y (softmax_y(a) se_y)^2)
    weights = log_pxy.softmax(0)
    summed_se = (weights * torch.stack([r.stderr for r in per_label])).pow(2).sum(0).sqrt()
    se = (direct.stderr**2 + summed_se**2).sqrt()
    # the check has power: both estimates are precise to a few hundredths of a nat
    assert se.max() < 0.05, se
    # each of the 5 differences within 3.5 standard errors: two-sided level 5 * 4.7e-4 = 0.2%
    z = (direct.log_px - summed) / se
    assert z.abs().max() < 3.5, (direct.log_px, summed, se)


def test_classifier_nll_accuracy_and_predictions(float64):
    m2, x = small_m2(), images()
    y = torch.tensor([0, 3, 9, 3, 1])
    expected = -m2.classifier(x).log_softmax(-1)[torch.arange(N), y]
    # cross-entropy and a hand log-softmax: float64 round-off
    torch.testing.assert_close(m2.classifier_nll(x, y), expected, rtol=1e-12, atol=0)
    predicted = m2.predict(x)
    assert predicted.shape == (N,) and m2.accuracy(x, predicted) == 1.0
    assert m2.accuracy(x, (predicted + 1) % C) == 0.0
    loss = m2.classifier_nll(x, y).sum()
    loss.backward()
    assert all(p.grad is not None for p in m2.classifier.parameters())
    assert F.one_hot(predicted, C).shape == (N, C)


def test_every_network_gets_a_gradient_from_the_semi_supervised_loss():
    m2, x = small_m2(), images()
    y = torch.arange(N)
    unlabelled = make_objective("enum", m2.model, m2.guide, x)
    labelled = make_objective("trace", m2.model, m2.guide, x, y)  # y given: z reparameterized
    loss = unlabelled(m2.model, m2.guide, x) + labelled(m2.model, m2.guide, x, y)
    loss = loss + m2.classifier_nll(x, y).mean()
    loss.backward()
    for name, p in m2.named_parameters():
        # > 0: a parameter the loss does not reach has grad None or exactly zero
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient for {name}"


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0, 1, 2, 10, 1]), r"labels must lie in 0\.\.9, got 10"),
        (torch.tensor([0, 1]), "y holds 2 labels but x holds 5 datapoints"),
    ],
)
def test_bad_labels_are_refused_by_model_guide_and_classifier(labels, match):
    m2, x = small_m2(), images()
    for fn in (m2.model, m2.guide, m2.classifier_nll):
        with pytest.raises(ValueError, match=match):
            pyro.clear_param_store()
            fn(x, labels)
