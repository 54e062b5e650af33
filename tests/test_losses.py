"""The losses of Eqs. 17-21 against plain float64 numpy written straight from the paper's formulas, plus the
properties the training relies on: exact twin denominator, finite values and gradients at |1e4| in float32 and bf16."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.config import TrainConfig
from twinturbo.train.losses import (
    RESCALINGS,
    bin_cross,
    cat_cross,
    cat_twin,
    critic,
    critic_nonsaturating,
    latent_infonce,
    log_rescale,
)
from twinturbo.train.terms import TASK_LOSSES as TASK_TERMS

TASK_LOSSES = {"cat_cross": cat_cross, "cat_twin": cat_twin, "bin_cross": bin_cross}  # Eqs. 17-19

# ---- references: loops over the paper's sums, probabilities formed explicitly (fine on moderate logits) ----------


def np_sigma(f: np.ndarray, rescale: str) -> np.ndarray:
    """sigma(f) for one sample's logits: softmax (Eq. 8) or sigmoid (Eq. 9), the naive way."""
    if rescale == "softmax":
        return np.exp(f) / np.sum(np.exp(f))
    return 1.0 / (1.0 + np.exp(-f))


def np_cat_cross(f, y, rescale):  # Eq. 17
    return -np.mean([np.log(np_sigma(f[i], rescale)[y[i]]) for i in range(len(y))])


def np_cat_twin(f, y, rescale):  # Eq. 18, x'_j = the same batch
    n = len(y)
    total = 0.0
    for i in range(n):
        denominator = sum(np_sigma(f[j], rescale)[y[i]] for j in range(n)) / n
        total += np.log(np_sigma(f[i], rescale)[y[i]] / denominator)
    return -total / n


def np_bin_cross(f, y, rescale):  # Eq. 19, element by element
    n, num_classes = f.shape
    total = 0.0
    for i in range(n):
        sigma = np_sigma(f[i], rescale)
        for c in range(num_classes):
            y_ic = 1.0 if y[i] == c else 0.0
            total += y_ic * np.log(sigma[c]) + (1.0 - y_ic) * np.log(1.0 - sigma[c])
    return -total / n


def np_critic(real, fake):  # Eq. 20
    def d(v):
        return 1.0 / (1.0 + np.exp(-v))

    return np.mean([np.log(d(v)) for v in real]) + np.mean([np.log(1.0 - d(v)) for v in fake])


def np_latent_infonce(z, z_star, temperature):  # Eq. 21 with cosine scores
    n = len(z)
    s = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            s[i, j] = z[i] @ z_star[j] / (np.linalg.norm(z[i]) * np.linalg.norm(z_star[j])) / temperature
    return -np.mean([np.log(np.exp(s[i, i]) / np.mean(np.exp(s[i]))) for i in range(n)])


def batch(n=7, num_classes=5, scale=3.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, num_classes, generator=g, dtype=torch.float64) * scale).to(dtype)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return logits, labels


REFERENCES = {"cat_cross": np_cat_cross, "cat_twin": np_cat_twin, "bin_cross": np_bin_cross}
CASES = [(name, rescale) for name in TASK_LOSSES for rescale in RESCALINGS]

# ---- values against the references --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,rescale", CASES)
@pytest.mark.parametrize("n", [1, 2, 9])
def test_task_loss_matches_numpy(name, rescale, n):
    logits, labels = batch(n=n, seed=n)
    got = TASK_LOSSES[name](logits, labels, rescale=rescale)
    assert got.shape == ()
    want = REFERENCES[name](logits.numpy(), labels.numpy(), rescale)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name,rescale", CASES)
def test_task_loss_float32_matches_numpy(name, rescale):
    logits, labels = batch(n=16, num_classes=10, seed=3, dtype=torch.float32)
    got = TASK_LOSSES[name](logits, labels, rescale=rescale)
    assert got.dtype == torch.float32
    want = REFERENCES[name](logits.double().numpy(), labels.numpy(), rescale)
    assert got.item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("rescale", RESCALINGS)
def test_twin_minus_cross_is_the_log_batch_mean(rescale):
    """Eq. 18 - Eq. 17 = 1/N sum_i log(1/N sum_j sigma_{y_i}(f_j)): the twin denominator is exact, not approximated."""
    logits, labels = batch(n=11, num_classes=4, scale=4.0, seed=5)
    f, y = logits.numpy(), labels.numpy()
    sigma = np.stack([np_sigma(row, rescale) for row in f])  # [N, C]
    want = np.mean([np.log(np.mean(sigma[:, y[i]])) for i in range(len(y))])
    got = cat_twin(logits, labels, rescale) - cat_cross(logits, labels, rescale)
    assert got.item() == pytest.approx(want, rel=1e-10)


def test_twin_is_zero_for_a_single_sample():
    logits, labels = batch(n=1)
    for rescale in RESCALINGS:
        assert cat_twin(logits, labels, rescale).item() == pytest.approx(0.0, abs=1e-12)


def test_softmax_bin_cross_exact_where_one_minus_softmax_underflows():
    """Row [a, 0, ..., 0], label 1: -log p_1 = log(e^a + C - 1) ~ a; -log(1 - p_0) = log(e^a + C - 1) - log(C - 1);
    the other C - 2 terms vanish. 1 - softmax_0 rounds to 0 here, so only the masked logsumexp gets this right."""
    num_classes, a = 10, 1e4
    logits = torch.zeros(1, num_classes)
    logits[0, 0] = a
    got = bin_cross(logits, torch.tensor([1]), "softmax")
    assert got.item() == pytest.approx(2 * a - math.log(num_classes - 1), rel=1e-6)


def test_bin_cross_single_class_is_zero_and_finite():
    """C = 1: the only class is the label, no (1 - y) term exists; the fully masked row must not leak NaN."""
    logits = torch.tensor([[3.0], [-2.0]], requires_grad=True)
    loss = bin_cross(logits, torch.tensor([0, 0]), "softmax")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_log_rescale_is_log_of_sigma():
    logits, _ = batch()
    for rescale in RESCALINGS:
        want = np.log(np.stack([np_sigma(row, rescale) for row in logits.numpy()]))
        np.testing.assert_allclose(log_rescale(logits, rescale).numpy(), want, rtol=1e-12)


@pytest.mark.parametrize("n_real,n_fake", [(6, 6), (3, 8), (1, 1)])
def test_critic_matches_numpy(n_real, n_fake):
    g = torch.Generator().manual_seed(n_real * 10 + n_fake)
    real = torch.randn(n_real, 1, generator=g, dtype=torch.float64) * 3
    fake = torch.randn(n_fake, generator=g, dtype=torch.float64) * 3
    got = critic(real, fake)
    assert got.shape == ()
    assert got.item() == pytest.approx(np_critic(real.flatten().numpy(), fake.numpy()), rel=1e-12)
    want_ns = -np.mean([np.log(1.0 / (1.0 + np.exp(-v))) for v in fake.numpy()])
    assert critic_nonsaturating(fake).item() == pytest.approx(want_ns, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.1])
@pytest.mark.parametrize("n", [1, 2, 8])
def test_latent_infonce_matches_numpy(n, temperature):
    g = torch.Generator().manual_seed(n)
    z = torch.randn(n, 6, generator=g, dtype=torch.float64) * 5
    z_star = torch.randn(n, 6, generator=g, dtype=torch.float64)
    got = latent_infonce(z, z_star, temperature)
    assert got.shape == ()
    assert got.item() == pytest.approx(np_latent_infonce(z.numpy(), z_star.numpy(), temperature), rel=1e-10, abs=1e-12)


def test_latent_infonce_is_scale_invariant_and_rewards_alignment():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(8, 5, generator=g, dtype=torch.float64)
    other = torch.randn(8, 5, generator=g, dtype=torch.float64)
    assert latent_infonce(z, 3.0 * z).item() == pytest.approx(latent_infonce(z, z).item(), rel=1e-12)
    assert latent_infonce(z, z).item() < latent_infonce(z, other).item()


# ---- gradients -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,rescale", CASES)
def test_task_loss_gradcheck(name, rescale):
    logits, labels = batch(n=5, num_classes=4, seed=1)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda f: TASK_LOSSES[name](f, labels, rescale), (logits,))


def test_critic_and_latent_gradcheck():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(4, 1, generator=g, dtype=torch.float64, requires_grad=True)
    fake = torch.randn(5, 1, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(critic, (real, fake))
    assert torch.autograd.gradcheck(critic_nonsaturating, (fake,))
    z = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z_star = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: latent_infonce(a, b, 0.5), (z, z_star))


# ---- stability at |1e4|, float32 and bf16 -----------------------------------------------------------------------


def extreme_logits(dtype, n=16, num_classes=10, seed=4):
    """Logits of exactly +-1e4 and 0, so every row has saturated, tied and dominated classes."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(-1, 2, (n, num_classes), generator=g) * 1e4).to(dtype), torch.randint(
        0, num_classes, (n,), generator=g
    )


def assert_finite_with_grads(loss_fn, *inputs):
    leaves = [x.detach().clone().requires_grad_() for x in inputs]
    loss = loss_fn(*leaves)
    loss.backward()
    assert torch.isfinite(loss), loss
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad.float()).all()
    return loss


def py_log_sigmoid(x: float) -> float:
    return min(x, 0.0) - math.log1p(math.exp(-abs(x)))


def py_logsumexp(values) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def stable_reference(name, f, y, rescale):
    """Eqs. 17-19 in python floats with the Appendix A shifts, for logits where sigma itself under/overflows.
    log(1 - softmax_c) is taken as log(sum_{k != c} e^{f_k}) - log(sum_k e^{f_k}), each shifted by its own max."""
    n, num_classes = f.shape
    f = f.tolist()
    if rescale == "softmax":
        log_p = [[row[c] - py_logsumexp(row) for c in range(num_classes)] for row in f]
        log_not_p = [[py_logsumexp(row[:c] + row[c + 1 :]) - py_logsumexp(row) if num_classes > 1 else -math.inf
                      for c in range(num_classes)] for row in f]
    else:
        log_p = [[py_log_sigmoid(v) for v in row] for row in f]
        log_not_p = [[py_log_sigmoid(-v) for v in row] for row in f]
    if name == "cat_cross":
        return -sum(log_p[i][y[i]] for i in range(n)) / n
    if name == "cat_twin":
        return -sum(log_p[i][y[i]] - (py_logsumexp([log_p[j][y[i]] for j in range(n)]) - math.log(n))
                    for i in range(n)) / n
    return -sum(log_p[i][c] if c == y[i] else log_not_p[i][c] for i in range(n) for c in range(num_classes)) / n


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name,rescale", CASES)
def test_task_loss_finite_and_right_at_1e4(name, rescale, dtype):
    logits, labels = extreme_logits(dtype)
    loss = assert_finite_with_grads(lambda f: TASK_LOSSES[name](f, labels, rescale), logits)
    assert loss.dtype == torch.float32  # bf16 is computed in float32
    want = stable_reference(name, logits.double().numpy(), labels.tolist(), rescale)
    assert loss.item() == pytest.approx(want, rel=1e-6, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_critic_and_latent_finite_at_1e4(dtype):
    real = (torch.tensor([1e4, -1e4, 0.0])).to(dtype)
    fake = (torch.tensor([-1e4, 1e4, 1e4, 0.0])).to(dtype)
    value = assert_finite_with_grads(critic, real, fake)
    r, f = real.double().tolist(), fake.double().tolist()  # bf16 rounds 1e4 to 9984
    want = sum(map(py_log_sigmoid, r)) / len(r) + sum(py_log_sigmoid(-v) for v in f) / len(f)
    assert value.item() == pytest.approx(want, rel=1e-6)
    value = assert_finite_with_grads(critic_nonsaturating, fake)
    assert value.item() == pytest.approx(-sum(map(py_log_sigmoid, f)) / len(f), rel=1e-6)
    z, _ = extreme_logits(dtype, n=6, num_classes=8, seed=7)
    z_star, _ = extreme_logits(dtype, n=6, num_classes=8, seed=8)
    value = assert_finite_with_grads(lambda a, b: latent_infonce(a, b, 0.1), z, z_star)
    assert value.item() == pytest.approx(np_latent_infonce(z.double().numpy(), z_star.double().numpy(), 0.1), rel=1e-5)
    z[0] = 0  # a zero latent must not make the cosine NaN
    assert_finite_with_grads(lambda a, b: latent_infonce(a, b, 0.1), z, z_star)


def test_latent_gradient_reaches_both_sides():
    z, z_star = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    latent_infonce(z, z_star).backward()
    assert z.grad.abs().sum() > 0 and z_star.grad.abs().sum() > 0


# ---- bad arguments: programming errors here, one-line user errors at the options ----------------------------------


@pytest.mark.parametrize("loss", [cat_cross, cat_twin, bin_cross])
def test_unknown_rescale_lists_valid_ones(loss):
    logits, labels = batch()
    with pytest.raises(ValueError) as err:
        loss(logits, labels, rescale="tanh")
    message = str(err.value)
    assert "tanh" in message and "softmax" in message and "sigmoid" in message and "\n" not in message
    with pytest.raises(TwinTurboError, match=r"^--rescale tanh: expected one of softmax, sigmoid$"):
        TrainConfig(rescale="tanh").validate()


def test_unknown_loss_name_lists_valid_ones():
    assert set(TASK_LOSSES) <= set(TASK_TERMS)  # the paper's three are registered task losses
    with pytest.raises(TwinTurboError) as err:
        TrainConfig(loss="cat-twin").validate()
    message = str(err.value)
    assert message.startswith("--loss cat-twin: expected one of ") and "\n" not in message
    assert all(name in message for name in TASK_TERMS)


def test_nonpositive_temperature_is_refused():
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match="temperature"):
        latent_infonce(z, z, temperature=0.0)
    with pytest.raises(TwinTurboError, match=r"^--temperature 0.0: expected a positive number$"):
        TrainConfig(temperature=0.0).validate()
