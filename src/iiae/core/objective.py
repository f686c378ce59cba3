"""The IIAE objective (Hwang et al., NeurIPS 2020, "Variational Interaction Information Maximization for
Cross-domain Disentanglement", https://arxiv.org/abs/2012.04251), every term named as in the paper.

The paper maximises

    (1 + lambda) * ELBO + lambda * KL[q(z^s|x,y) || p(z^s)]
        - lambda * (KL[q(z^s|x,y) || r^y(z^s|y)] + KL[q(z^s|x,y) || r^x(z^s|x)]),

    ELBO = E[log p(x|z^x,z^s)] + E[log p(y|z^y,z^s)]
           - KL[q(z^x|x) || p] - KL[q(z^y|y) || p] - KL[q(z^s|x,y) || p],

a lower bound of ELBO + lambda * (2 I(X;Y;Z^s) - I(Z^x;Z^s) - I(Z^y;Z^s)). Following the official code, the
ELBO is weighted by beta instead of 1 and its KL terms are annealed; :func:`iiae_loss` minimises

    loss = (beta + lambda) * (w * L1(x_hat, x) + w * L1(y_hat, y))
         + a(t) * (beta + lambda) * (KL[q(z^x|x) || p] + KL[q(z^y|y) || p])
         + a(t) * beta * KL[q(z^s|x,y) || p]
         + lambda * (KL[q(z^s|x,y) || r^x(z^s|x)] + KL[q(z^s|x,y) || r^y(z^s|y)])

with a(t) = 1 - exp(-t / T) (plus, only when ``LossConfig.r_fit_weight`` > 0, an ablation term that is not
in the paper: r^x and r^y fitted to a detached q(z^s|x,y), see :class:`iiae.core.config.LossConfig`).
The L1 term is the mean absolute error (a Laplace log-likelihood up to scale and
constant); with ``LossConfig.reconstruction = "mse"`` it is the mean squared error instead, returned as
``mse_x`` and ``mse_y``; with ``"gaussian"`` it is the negative log-likelihood of a unit-variance Gaussian,
1/2 * sum over the feature dimensions of the squared error (up to a constant), returned as ``nll_x`` and
``nll_y``. The "gaussian" form is the one that stays in proportion with the KL terms, which are sums over latent
dimensions too: a mean over D feature dimensions makes the likelihood D times weaker, and on 1280-d image
features the KL terms then win and the codes collapse to the prior (BENCHMARKS.md, zero-shot SBIR). Each KL is
summed over latent dimensions and averaged over the batch. With beta = 1 and a = 1 the loss is the negated
objective of the paper (up to the likelihood's scale).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from iiae.core.config import LossConfig


@dataclass
class Gaussian:
    """A diagonal Gaussian by its mean and log-variance (any shape; the first dimension is the batch)."""

    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Reparameterised sample mean + exp(logvar / 2) * eps, differentiable in mean and logvar.

        ``shard = (rank, world)``: this batch is block ``rank`` of a global batch of ``world`` such blocks (DDP);
        eps is drawn for the whole global batch and sliced, so every pair gets the noise one process would draw.
        """
        rank, world = shard
        count = len(self.mean)
        shape = (world * count, *self.mean.shape[1:])
        noise = torch.randn(shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        noise = noise[rank * count : (rank + 1) * count] if world > 1 else noise
        return self.mean + torch.exp(0.5 * self.logvar) * noise


# Floor of every log-variance (sigma ~ 3e-7): below about -88, exp(-logvar) overflows float32 and KL[q || r]
# becomes inf or NaN (0 * inf); -30 keeps every KL finite, for means up to ~1e6, without touching trained values.
LOGVAR_MIN = -30.0


def split_gaussian(parameters: torch.Tensor, logvar_max: float) -> Gaussian:
    """Split an encoder output along dim 1 into mean and log-variance; clamp it to [LOGVAR_MIN, logvar_max]."""
    mean, logvar = parameters.chunk(2, dim=1)
    return Gaussian(mean, logvar.clamp(min=LOGVAR_MIN, max=logvar_max))


def _sum_latent(values: torch.Tensor) -> torch.Tensor:
    """Sum over every latent dimension, mean over the batch."""
    return values.flatten(1).sum(dim=1).mean()


def kl_to_standard_normal(q: Gaussian) -> torch.Tensor:
    """KL[N(mu, sigma^2) || N(0, I)] = 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)."""
    return _sum_latent(0.5 * (q.mean.square() + q.logvar.exp() - 1.0 - q.logvar))


def kl_between(q: Gaussian, r: Gaussian) -> torch.Tensor:
    """KL[q || r] = 1/2 sum(log sigma_r^2 - log sigma_q^2 + (sigma_q^2 + (mu_q - mu_r)^2) / sigma_r^2 - 1)."""
    variance_ratio = torch.exp(q.logvar - r.logvar)
    mahalanobis = (q.mean - r.mean).square() * torch.exp(-r.logvar)
    return _sum_latent(0.5 * (r.logvar - q.logvar + variance_ratio + mahalanobis - 1.0))


def kl_annealing(step: int | float, anneal_steps: float) -> float:
    """a(t) = 1 - exp(-t / T); T = 0 means no annealing (a = 1)."""
    if anneal_steps <= 0:
        return 1.0
    return 1.0 - math.exp(-float(step) / anneal_steps)


@dataclass
class Posteriors:
    """The five Gaussians the encoders produce for a batch of pairs (x, y)."""

    exclusive_x: Gaussian  # q(z^x | x)
    exclusive_y: Gaussian  # q(z^y | y)
    shared_x: Gaussian  # r^x(z^s | x)
    shared_y: Gaussian  # r^y(z^s | y)
    shared_joint: Gaussian  # q(z^s | x, y)


def iiae_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    reconstruction_x: torch.Tensor,
    reconstruction_y: torch.Tensor,
    posteriors: Posteriors,
    config: LossConfig,
    step: int,
) -> dict[str, torch.Tensor]:
    """Every term of the IIAE loss and their weighted sum under ``"loss"`` (the quantity to minimise).

    Returns unweighted terms (``l1_x``, ``l1_y``; ``mse_x``, ``mse_y`` when ``config.reconstruction`` is
    ``"mse"``; ``nll_x``, ``nll_y`` when it is ``"gaussian"``; ``kl_exclusive_x``, ``kl_exclusive_y``,
    ``kl_joint``, ``kl_joint_to_r_x``, ``kl_joint_to_r_y``; ``kl_detached_joint_to_r`` when
    ``config.r_fit_weight`` > 0), the
    annealing factor ``kl_annealing`` and ``loss``.
    """
    beta, lambda_, w = config.beta, config.lambda_, config.reconstruction_weight
    anneal = kl_annealing(step, config.kl_anneal_steps)

    if config.reconstruction == "gaussian":  # -log N(x; x_hat, I) + const, summed over feature dimensions
        l1_x = 0.5 * _sum_latent((reconstruction_x - x).square())
        l1_y = 0.5 * _sum_latent((reconstruction_y - y).square())
    elif config.reconstruction == "mse":  # mean squared error (the paper's zero-shot recipe: terms mse_x, mse_y)
        l1_x = (reconstruction_x - x).square().mean()
        l1_y = (reconstruction_y - y).square().mean()
    else:
        l1_x = (reconstruction_x - x).abs().mean()  # -E[log p(x | z^x, z^s)] up to scale and constant
        l1_y = (reconstruction_y - y).abs().mean()  # -E[log p(y | z^y, z^s)]
    kl_exclusive_x = kl_to_standard_normal(posteriors.exclusive_x)  # KL[q(z^x|x) || p(z^x)]
    kl_exclusive_y = kl_to_standard_normal(posteriors.exclusive_y)  # KL[q(z^y|y) || p(z^y)]
    kl_joint = kl_to_standard_normal(posteriors.shared_joint)  # KL[q(z^s|x,y) || p(z^s)]
    kl_joint_to_r_x = kl_between(posteriors.shared_joint, posteriors.shared_x)  # KL[q(z^s|x,y) || r^x(z^s|x)]
    kl_joint_to_r_y = kl_between(posteriors.shared_joint, posteriors.shared_y)  # KL[q(z^s|x,y) || r^y(z^s|y)]

    loss = (
        (beta + lambda_) * (w * l1_x + w * l1_y)
        + anneal * (beta + lambda_) * (kl_exclusive_x + kl_exclusive_y)
        + anneal * beta * kl_joint
        + lambda_ * (kl_joint_to_r_x + kl_joint_to_r_y)
    )
    extra = {}
    if config.r_fit_weight > 0:  # not in the paper: fit r^x, r^y to a detached q(z^s|x,y) (the lambda = 0 ablation)
        joint = posteriors.shared_joint
        target = Gaussian(joint.mean.detach(), joint.logvar.detach())
        fit = kl_between(target, posteriors.shared_x) + kl_between(target, posteriors.shared_y)
        extra["kl_detached_joint_to_r"] = fit
        loss = loss + config.r_fit_weight * fit
    names = {"mse": ("mse_x", "mse_y"), "gaussian": ("nll_x", "nll_y")}.get(config.reconstruction, ("l1_x", "l1_y"))
    return {
        "loss": loss,
        names[0]: l1_x,
        names[1]: l1_y,
        "kl_exclusive_x": kl_exclusive_x,
        "kl_exclusive_y": kl_exclusive_y,
        "kl_joint": kl_joint,
        "kl_joint_to_r_x": kl_joint_to_r_x,
        "kl_joint_to_r_y": kl_joint_to_r_y,
        "kl_annealing": torch.tensor(anneal),
        **extra,
    }
