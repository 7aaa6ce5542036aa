"""The training formulas on hand-made numbers: KL, its analytic gradient, psi, the latent update (eq. 7)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from cdul_rt.train.losses import (  # noqa: E402
    bernoulli_kl,
    bernoulli_kl_grad_yu,
    categorical_kl,
    categorical_kl_grad_yu,
    latent_from_labels,
    latent_update,
    psi,
    psi_c2,
)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_bernoulli_kl_matches_hand_computation():
    y = torch.tensor([[0.2, 0.9], [0.5, 0.5]], dtype=torch.float64)
    p = torch.tensor([[0.4, 0.6], [0.5, 0.1]], dtype=torch.float64)

    def kl(a, b):
        return a * math.log(a / b) + (1 - a) * math.log((1 - a) / (1 - b))

    expected = ((kl(0.2, 0.4) + kl(0.9, 0.6)) + (kl(0.5, 0.5) + kl(0.5, 0.1))) / 2  # sum classes, mean batch
    got = bernoulli_kl(y, torch.logit(p))
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_bernoulli_kl_is_zero_iff_equal_and_finite_at_the_ends():
    y = torch.tensor([[0.0, 1.0, 0.3]], dtype=torch.float64)
    assert bernoulli_kl(y, torch.logit(y.clamp(1e-6, 1 - 1e-6))).item() == pytest.approx(0.0, abs=1e-4)
    far = bernoulli_kl(y, torch.tensor([[50.0, -50.0, 0.0]], dtype=torch.float64))
    assert torch.isfinite(far) and far.item() > 10  # confident and wrong: large but finite (clamped)


def test_categorical_kl_matches_hand_computation():
    y = torch.tensor([[0.2, 0.6]], dtype=torch.float64)
    logits = torch.tensor([[0.0, math.log(3.0)]], dtype=torch.float64)  # softmax = (0.25, 0.75)
    q = (0.25, 0.75)
    expected = q[0] * math.log(q[0] / 0.25) + q[1] * math.log(q[1] / 0.75)  # q == p -> 0
    assert categorical_kl(y, logits).item() == pytest.approx(expected, abs=1e-12)
    y2 = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    expected2 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert categorical_kl(y2, logits).item() == pytest.approx(expected2, rel=1e-9)


def test_analytic_gradient_equals_autograd():
    gen = torch.Generator().manual_seed(0)
    y = (torch.rand(5, 7, generator=gen, dtype=torch.float64) * 0.98 + 0.01).requires_grad_(True)
    logits = torch.randn(5, 7, generator=gen, dtype=torch.float64) * 3
    loss = bernoulli_kl(y, logits) * y.shape[0]  # per-image loss: undo the batch mean
    (auto,) = torch.autograd.grad(loss, y)
    analytic = bernoulli_kl_grad_yu(y.detach(), logits)
    torch.testing.assert_close(analytic, auto, rtol=1e-7, atol=1e-9)
    # and it is logit(y) - z_p
    torch.testing.assert_close(analytic, torch.logit(y.detach()) - logits)


def test_categorical_gradient_is_per_image():
    y = torch.tensor([[0.2, 0.6], [0.3, 0.3]], dtype=torch.float64)
    logits = torch.zeros(2, 2, dtype=torch.float64)
    grad = categorical_kl_grad_yu(y, logits)
    single = categorical_kl_grad_yu(y[:1], logits[:1])
    torch.testing.assert_close(grad[:1], single)  # independent of the other images in the batch


def test_psi_zero_at_ends_max_at_half_symmetric():
    for sigma, c1 in ((0.25, 1.0), (0.1, 2.0), (1.0, 0.5)):
        ys = torch.linspace(0, 1, 1001, dtype=torch.float64)
        values = psi(ys, sigma, c1)
        assert values[0].item() == pytest.approx(0.0, abs=1e-12)
        assert values[-1].item() == pytest.approx(0.0, abs=1e-12)
        assert int(values.argmax()) == 500  # y = 0.5
        torch.testing.assert_close(values, values.flip(0))
        assert (values[1:-1] > 0).all()
        peak = c1 / (sigma * math.sqrt(2 * math.pi)) + psi_c2(sigma, c1)
        assert values[500].item() == pytest.approx(peak)


def test_psi_default_values_by_hand():
    # sigma 0.25, c1 1: c2 = -exp(-2) / (0.25 sqrt(2 pi)); psi(0.5) = (1 - exp(-2)) / (0.25 sqrt(2 pi))
    norm = 1 / (0.25 * math.sqrt(2 * math.pi))
    assert psi(torch.tensor(0.5), 0.25, 1.0).item() == pytest.approx(norm * (1 - math.exp(-2)), rel=1e-6)
    assert psi(torch.tensor(0.75), 0.25, 1.0).item() == pytest.approx(norm * (math.exp(-0.5) - math.exp(-2)),
                                                                        rel=1e-6)


def test_latent_update_direction_and_magnitude():
    # y_u = 0.5 (ytilde 0), network says 0.9 (z = logit 0.9): dL/dy_u = 0 - logit(0.9) < 0 -> ytilde grows.
    ytilde = torch.tensor([[0.0, _logit(0.2), _logit(0.999)]], dtype=torch.float64)
    logits = torch.tensor([[_logit(0.9), _logit(0.05), _logit(0.01)]], dtype=torch.float64)
    eta, sigma, c1 = 0.5, 0.25, 1.0
    new = latent_update(ytilde, logits, eta, sigma, c1)
    y = torch.sigmoid(ytilde)
    expected = ytilde - eta * psi(y, sigma, c1) * (ytilde - logits)
    torch.testing.assert_close(new, expected)
    # hand numbers for the unsure label: psi(0.5) = 1.37981, step = 0.5 * 1.37981 * logit(0.9) = 1.5163
    assert new[0, 0].item() == pytest.approx(0.5 * 1.37981 * _logit(0.9), rel=1e-5)
    assert new[0, 0] > 0 and new[0, 1] < ytilde[0, 1]  # both move toward the prediction
    # a confident label barely moves though the network disagrees strongly; the unsure one moves most in y
    dy = (torch.sigmoid(new) - y).abs()
    assert dy[0, 2] < 1e-3 < dy[0, 0]


def test_latent_update_without_psi_and_fixed_point():
    ytilde = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    logits = torch.tensor([[3.0, -2.0]], dtype=torch.float64)
    new = latent_update(ytilde, logits, eta=0.25, sigma=0.25, c1=1.0, use_psi=False)
    torch.testing.assert_close(new, torch.tensor([[1.0 - 0.25 * (1.0 - 3.0), -2.0]], dtype=torch.float64))


def test_latent_from_labels_clamps():
    out = latent_from_labels(torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert out[1].item() == 0.0
    assert torch.isfinite(out).all() and out[0].item() == pytest.approx(-out[2].item())
    assert out[2].item() == pytest.approx(_logit(1 - 1e-6))


# -- mutation survivors (issue 19 item 4): the clamps at saturated logits -------------------------------------------
EPS = 1e-6


def _bernoulli_kl_ref(y: float, z: float) -> float:
    """KL(Bernoulli(y) || Bernoulli(p)) with y and p = sigmoid(z) clamped to [eps, 1 - eps], in plain floats."""
    y = min(max(y, EPS), 1 - EPS)
    p = min(max(1 / (1 + math.exp(-z)), EPS), 1 - EPS)
    return y * math.log(y / p) + (1 - y) * math.log((1 - y) / (1 - p))


@pytest.mark.parametrize("y,z", [(1.0, 50.0), (0.0, -50.0), (0.0, 50.0), (1.0, -50.0), (0.5, 30.0), (0.5, -30.0)])
def test_bernoulli_kl_clamps_the_prediction_like_the_label(y, z):
    # float64 so that the clamp's 1e-6 is far above rounding: without it a saturated pair would give KL < 0 (agreeing)
    # or grow with |z| (disagreeing) instead of stopping at KL(eps || 1 - eps) ~ 13.8
    got = bernoulli_kl(torch.tensor([[y]], dtype=torch.float64), torch.tensor([[z]], dtype=torch.float64)).item()
    assert got == pytest.approx(_bernoulli_kl_ref(y, z), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("y,z", [(1.0, 50.0), (0.0, -50.0), (1.0, 13.9), (0.0, -13.9)])
def test_the_gradient_of_a_saturated_label_agreeing_with_a_saturated_prediction_is_zero(y, z):
    grad = bernoulli_kl_grad_yu(torch.tensor([[y]], dtype=torch.float64), torch.tensor([[z]], dtype=torch.float64))
    assert abs(grad.item()) < 1e-9


@pytest.mark.parametrize("y,z", [(1.0, -50.0), (0.0, 50.0)])
def test_the_gradient_of_a_saturated_disagreement_is_bounded_by_the_clamp(y, z):
    grad = bernoulli_kl_grad_yu(torch.tensor([[y]], dtype=torch.float64), torch.tensor([[z]], dtype=torch.float64))
    assert grad.item() == pytest.approx(math.copysign(2 * math.log((1 - EPS) / EPS), y - 0.5), rel=1e-9)


def test_an_unknown_loss_is_named():
    with pytest.raises(ValueError, match=r"^unknown loss 'hinge'$"):
        latent_update(torch.zeros(1, 2), torch.zeros(1, 2), eta=1.0, sigma=0.2, c1=1.0, loss="hinge")


def test_the_categorical_gradient_uses_the_given_eps():
    y_u = torch.tensor([[0.0, 0.3, 0.7], [0.05, 0.0, 0.9]], dtype=torch.float64)
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]], dtype=torch.float64)
    y = y_u.clamp(min=0.1).requires_grad_(True)
    (want,) = torch.autograd.grad(categorical_kl(y, logits, eps=0.1) * 2, y)
    torch.testing.assert_close(categorical_kl_grad_yu(y_u, logits, eps=0.1), want)
