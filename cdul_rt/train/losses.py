"""The training math of CDUL section 3.2 as small pure torch functions.

Notation (paper): ``y_u`` pseudo labels in [0, 1], ``ytilde = logit(y_u)`` their latent parameters, ``y_p`` the
network's sigmoid predictions, ``z_p`` its logits.

Loss choice: the network is multi-label (one sigmoid per class), so the KL divergence is taken per class between
two Bernoulli distributions and summed over classes (``bernoulli_kl``); the categorical KL over a softmax of the
logits (``categorical_kl``) is kept as an option only, because a softmax forces the classes to compete, which
contradicts the multi-label setting.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-6  # clamp for probabilities inside logs and logits


def bernoulli_kl(y_u: torch.Tensor, logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Mean over the batch of ``sum_i y log(y/p) + (1-y) log((1-y)/(1-p))`` with ``p = sigmoid(logits)``.

    ``y_u`` and ``p`` are clamped to [eps, 1-eps]; ``0 log 0`` is taken as 0 through the clamp (its contribution is
    below ``eps * log(eps)``). ``log p`` and ``log(1-p)`` come from ``logsigmoid`` for stability.
    """
    y = y_u.clamp(eps, 1.0 - eps)
    log_p = torch.nn.functional.logsigmoid(logits).clamp(min=math.log(eps), max=math.log1p(-eps))
    log_1mp = torch.nn.functional.logsigmoid(-logits).clamp(min=math.log(eps), max=math.log1p(-eps))
    kl = y * (torch.log(y) - log_p) + (1.0 - y) * (torch.log1p(-y) - log_1mp)
    return kl.sum(dim=1).mean()


def categorical_kl(y_u: torch.Tensor, logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Option: KL(q || softmax(logits)) with ``q = y_u / sum(y_u)`` per image; mean over the batch."""
    q = y_u.clamp(min=eps)
    q = q / q.sum(dim=1, keepdim=True)
    log_p = torch.log_softmax(logits, dim=1)
    return (q * (torch.log(q) - log_p)).sum(dim=1).mean()


def bernoulli_kl_grad_yu(y_u: torch.Tensor, logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``dL/dy_u`` of the per-image Bernoulli KL (summed over classes, not averaged over the batch).

    d/dy [y log(y/p) + (1-y) log((1-y)/(1-p))] = log(y/p) + 1 - log((1-y)/(1-p)) - 1
                                                = logit(y) - logit(p).
    With ``p = sigmoid(z_p)`` this is ``logit(y_u) - z_p``: the update pulls the latent logit toward the
    network's logit. Per image rather than per batch, so the step size ``eta`` does not depend on the batch size.
    """
    y = y_u.clamp(eps, 1.0 - eps)
    z_p = logits.clamp(math.log(eps / (1 - eps)), math.log((1 - eps) / eps))
    return torch.log(y) - torch.log1p(-y) - z_p


def categorical_kl_grad_yu(y_u: torch.Tensor, logits: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``dL/dy_u`` of the per-image categorical KL (through the normalisation ``q = y/sum(y)``), via autograd."""
    with torch.enable_grad():
        y = y_u.detach().clone().clamp(min=eps).requires_grad_(True)
        loss = categorical_kl(y, logits.detach(), eps) * y.shape[0]
        (grad,) = torch.autograd.grad(loss, y)
    return grad


def psi_c2(sigma: float, c1: float) -> float:
    """The constant of the paper's supplement (eq. in 6.2) that makes ``psi(0) = psi(1) = 0``."""
    return -c1 / (sigma * math.sqrt(2.0 * math.pi)) * math.exp(-0.5 * (0.5 / sigma) ** 2)


def psi(y_u: torch.Tensor, sigma: float, c1: float) -> torch.Tensor:
    """``psi(y) = c1/(sigma sqrt(2 pi)) exp(-0.5 ((y - 0.5)/sigma)^2) + c2`` (paper eq. 8 and supplement 6.2).

    Largest at 0.5 (unsure labels move fastest), zero at 0 and 1 (confident labels are kept). Symmetric about 0.5,
    so the two ends are zero together.
    """
    gauss = c1 / (sigma * math.sqrt(2.0 * math.pi)) * torch.exp(-0.5 * ((y_u - 0.5) / sigma) ** 2)
    return gauss + psi_c2(sigma, c1)


def latent_update(
    ytilde: torch.Tensor,
    logits: torch.Tensor,
    eta: float,
    sigma: float,
    c1: float,
    use_psi: bool = True,
    loss: str = "bernoulli",
) -> torch.Tensor:
    """Paper eq. 7: ``ytilde <- ytilde - eta * psi(y_u) * dL/dy_u`` with ``y_u = sigmoid(ytilde)``, predictions fixed.

    ``use_psi=False`` is the "no Gaussian" ablation (``psi == 1``). Returns the new latent logits.
    """
    y_u = torch.sigmoid(ytilde)
    if loss == "bernoulli":
        grad = bernoulli_kl_grad_yu(y_u, logits)
    elif loss == "categorical":
        grad = categorical_kl_grad_yu(y_u, logits)
    else:
        raise ValueError(f"unknown loss {loss!r}")
    weight = psi(y_u, sigma, c1) if use_psi else torch.ones_like(y_u)
    return ytilde - eta * weight * grad


def latent_from_labels(y_u: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``ytilde = logit(clamp(y_u, eps, 1 - eps))`` (initialisation from S_final)."""
    y = y_u.clamp(eps, 1.0 - eps)
    return torch.log(y) - torch.log1p(-y)
