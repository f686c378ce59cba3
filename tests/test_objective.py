"""The IIAE objective: every KL against a hand computation, the full loss against the formula, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from iiae import IIAE, LossConfig, ModelConfig
from iiae.core.objective import (
    Gaussian,
    Posteriors,
    iiae_loss,
    kl_annealing,
    kl_between,
    kl_to_standard_normal,
    split_gaussian,
)


def test_kl_to_standard_normal_by_hand():
    # one sample, two dims: mu = (1, -2), sigma^2 = (1, 4)
    q = Gaussian(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(4.0)]]))
    expected = 0.5 * ((1 + 1 - 1 - 0) + (4 + 4 - 1 - math.log(4.0)))
    assert kl_to_standard_normal(q).item() == pytest.approx(expected, rel=1e-6)


def test_kl_between_by_hand():
    # q = N(1, 1), r = N(0, 4): KL = 1/2 (log 4 - 0 + (1 + 1) / 4 - 1)
    q = Gaussian(torch.tensor([[1.0]]), torch.tensor([[0.0]]))
    r = Gaussian(torch.tensor([[0.0]]), torch.tensor([[math.log(4.0)]]))
    assert kl_between(q, r).item() == pytest.approx(0.5 * (math.log(4.0) + 0.5 - 1), rel=1e-6)
    assert kl_between(q, q).item() == pytest.approx(0.0, abs=1e-7)


def test_kls_match_torch_distributions_sum_over_latents_mean_over_batch():
    generator = torch.Generator().manual_seed(0)
    q = Gaussian(torch.randn(5, 3, 2, 2, generator=generator), torch.randn(5, 3, 2, 2, generator=generator))
    r = Gaussian(torch.randn(5, 3, 2, 2, generator=generator), torch.randn(5, 3, 2, 2, generator=generator))
    normal_q = Normal(q.mean, torch.exp(0.5 * q.logvar))
    normal_r = Normal(r.mean, torch.exp(0.5 * r.logvar))
    prior = Normal(torch.zeros_like(q.mean), torch.ones_like(q.mean))
    expected_prior = kl_divergence(normal_q, prior).flatten(1).sum(1).mean()
    expected_between = kl_divergence(normal_q, normal_r).flatten(1).sum(1).mean()
    assert kl_to_standard_normal(q).item() == pytest.approx(expected_prior.item(), rel=1e-5)
    assert kl_between(q, r).item() == pytest.approx(expected_between.item(), rel=1e-5)


def test_kl_annealing():
    assert kl_annealing(0, 100) == 0.0
    assert kl_annealing(100, 100) == pytest.approx(1 - math.exp(-1))
    assert kl_annealing(10**6, 100) == pytest.approx(1.0)
    assert kl_annealing(5, 0) == 1.0


def test_split_gaussian_clamps_logvar_from_above_only():
    parameters = torch.tensor([[0.5, -3.0, 20.0, -30.0]])
    gaussian = split_gaussian(parameters, logvar_max=9.21)
    assert gaussian.mean.tolist() == [[0.5, -3.0]]
    assert gaussian.logvar[0].tolist() == pytest.approx([9.21, -30.0])


def _fixed_posteriors() -> Posteriors:
    def gaussian(mean: float, logvar: float, shape=(2, 3)) -> Gaussian:
        return Gaussian(torch.full(shape, mean), torch.full(shape, logvar))

    return Posteriors(
        exclusive_x=gaussian(1.0, 0.0),  # KL = 3 * 0.5 * 1 = 1.5
        exclusive_y=gaussian(0.0, math.log(2.0)),  # KL = 3 * 0.5 * (2 - 1 - log 2)
        shared_x=gaussian(0.0, 0.0),
        shared_y=gaussian(2.0, 0.0),
        shared_joint=gaussian(1.0, 0.0),  # KL to prior 1.5, to r^x 1.5, to r^y 1.5
    )


def test_full_loss_equals_formula_on_fixed_tensors():
    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    reconstruction_x = torch.full_like(x, 0.5)  # L1 = 0.5
    reconstruction_y = torch.full_like(y, -0.25)  # L1 = 0.25
    config = LossConfig(beta=0.2, lambda_=1.5, reconstruction_weight=10.0, kl_anneal_steps=50.0)
    step = 30
    terms = iiae_loss(x, y, reconstruction_x, reconstruction_y, _fixed_posteriors(), config, step)

    kl_x, kl_y = 1.5, 1.5 * (2 - 1 - math.log(2.0))
    kl_s, kl_rx, kl_ry = 1.5, 1.5, 1.5
    a = 1 - math.exp(-30 / 50)
    beta, lam, w = 0.2, 1.5, 10.0
    expected = (beta + lam) * (w * 0.5 + w * 0.25) + a * (beta + lam) * (kl_x + kl_y) + a * beta * kl_s
    expected += lam * (kl_rx + kl_ry)
    assert terms["loss"].item() == pytest.approx(expected, rel=1e-6)
    assert terms["l1_x"].item() == pytest.approx(0.5)
    assert terms["l1_y"].item() == pytest.approx(0.25)
    assert terms["kl_exclusive_y"].item() == pytest.approx(kl_y, rel=1e-6)
    assert terms["kl_joint_to_r_x"].item() == pytest.approx(kl_rx)
    assert terms["kl_joint_to_r_y"].item() == pytest.approx(kl_ry)
    assert terms["kl_annealing"].item() == pytest.approx(a)


def test_beta_one_without_annealing_is_the_negated_paper_objective():
    x, y = torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)
    lam, w = 0.7, 3.0
    config = LossConfig(beta=1.0, lambda_=lam, reconstruction_weight=w, kl_anneal_steps=0.0)
    terms = iiae_loss(x, y, torch.full_like(x, 0.5), torch.full_like(y, 0.5), _fixed_posteriors(), config, 0)
    log_px, log_py = -w * terms["l1_x"], -w * terms["l1_y"]  # Laplace log-likelihoods up to constants
    elbo = log_px + log_py - terms["kl_exclusive_x"] - terms["kl_exclusive_y"] - terms["kl_joint"]
    objective = (1 + lam) * elbo + lam * terms["kl_joint"] - lam * (terms["kl_joint_to_r_y"] + terms["kl_joint_to_r_x"])
    assert terms["loss"].item() == pytest.approx(-objective.item(), rel=1e-6)


def _one_backward(lambda_: float) -> IIAE:
    torch.manual_seed(0)
    model = IIAE(ModelConfig(image_size=16, encoder_widths=[8], exclusive_widths=[8, 8], decoder_widths=[8]))
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.rand(4, 3, 16, 16) * 2 - 1
    output = model(x, y)
    config = LossConfig(lambda_=lambda_, kl_anneal_steps=0.0)
    iiae_loss(x, y, output.reconstruction_x, output.reconstruction_y, output.posteriors, config, 1)["loss"].backward()
    return model


def test_gradients_reach_every_encoder_and_decoder():
    model = _one_backward(lambda_=1.0)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_lambda_zero_gives_the_r_heads_no_gradient():
    # r^x and r^y heads enter the loss only through KL[q(z^s|x,y) || r]: with lambda = 0 they learn nothing
    model = _one_backward(lambda_=0.0)
    for head in (model.shared_encoder_x.head, model.shared_encoder_y.head):
        for parameter in head.parameters():
            assert parameter.grad is None or parameter.grad.abs().sum() == 0
    # while the trunks still learn through the joint encoder
    assert model.shared_encoder_x.trunk[0][0].weight.grad.abs().sum() > 0
