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
from pyro_vae.infer.objectives.auxiliary import AuxiliaryTerm
from pyro_vae.infer.objectives.registry import make_objective
from pyro_vae.infer.training.svi import SVIStep
from pyro_vae.models.m2 import M2
from pyro_vae.nets import MLP

N, D, C, M = 5, 6, 10, 2


def small_m2(init="torch"):
    torch.manual_seed(0)
    return M2(D, num_classes=C, latent_dim=M, hidden=(8,), init=init)


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


def test_small_init_redraws_the_hidden_layers_of_every_network_and_keeps_the_outputs():
    torch.manual_seed(0)
    reference = M2(D, num_classes=C, latent_dim=M, hidden=(400,), init="torch")
    torch.manual_seed(0)
    small = M2(D, num_classes=C, latent_dim=M, hidden=(400,))  # the default
    assert small.config["init"] == "small" and reference.config["init"] == "torch"
    mlps = [m for m in small.modules() if isinstance(m, MLP)]
    assert len(mlps) == 3  # encoder, decoder, classifier
    for mlp in mlps:
        hidden, output = mlp[0], mlp[-1]
        # 400 x (D or more) draws of N(0, 0.001^2): the sample sd is 0.001 within 10%
        assert hidden.weight.std().item() == pytest.approx(1e-3, rel=0.1)
        assert hidden.bias.abs().max().item() < 6e-3  # 6 sd
        assert output.weight.abs().max().item() > 1e-2  # torch's default, not redrawn
    # the same architecture: a run stored with either init rebuilds from its config
    rebuilt = M2(**small.config)
    assert rebuilt.load_state_dict(small.state_dict()) is not None
    with pytest.raises(
        ValueError, match=r"unknown init 'zeros'; choose one of \['torch', 'small'\]"
    ):
        M2(D, init="zeros")


class GradientRecorder(torch.optim.Optimizer):
    """An optimizer that keeps every step's gradients and never moves the parameters."""

    def __init__(self, params):
        super().__init__(params, {})
        self.steps = []

    def step(self, closure=None):
        self.steps.append(
            [
                None if p.grad is None else p.grad.clone()
                for g in self.param_groups
                for p in g["params"]
            ]
        )


def test_alternate_labelled_steps_take_each_part_of_the_objective_apart(float64):
    # the "alternate" schedule: a labelled batch takes one step on share * -ELBO(x, y), then
    # one on share * weight * mean -log q(y|x); the optimizer records the gradients and moves
    # nothing, so recomputing each part from the same seed must give the same gradients
    m2, x = small_m2(), images()
    y = torch.arange(N)
    classify = AuxiliaryTerm("trace", m2.classifier_nll, weight=3.0)
    svi = SVIStep(m2.model, m2.guide, "enum", optimizer=GradientRecorder, labelled_loss=classify)
    svi.setup(x, labelled=(x, y))
    params = list(svi.params.values())
    pyro.set_rng_seed(7)
    value = svi.step_labelled(x, y, num_labelled=20, share=0.25)
    assert len(svi.optimizer.steps) == 2
    pyro.set_rng_seed(7)
    neg_elbo = classify.objective(m2.model, m2.guide, x, y, num_data=20)
    term = 3.0 * m2.classifier_nll(x, y).mean()
    for recorded, part in zip(svi.optimizer.steps, (neg_elbo, term), strict=True):
        expected = torch.autograd.grad(0.25 * part, params, allow_unused=True)
        for got, want in zip(recorded, expected, strict=True):
            if want is None:  # a network the part does not reach: no gradient at all
                assert got is None
                continue
            # float64: only summation order could differ, and it does not
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
    # the returned value is the whole labelled objective per datapoint, before any share
    assert value == pytest.approx((neg_elbo + term).item(), rel=1e-12)
    assert svi.last_neg_elbo == pytest.approx(neg_elbo.item(), rel=1e-12)
