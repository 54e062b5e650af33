"""The TwinTURBO losses of section 4.3 (Eqs. 17-21) as plain functions of logits, labels and latents.

Every log-probability is taken in log space (log_softmax, logsigmoid, logsumexp; Appendix A), never as
log(softmax(.)), so each loss and its gradient stay finite for logits up to |1e4|. Half-precision inputs (bf16,
fp16) are computed in float32, as autocast would, and the scalar comes back in float32: at |1e4| a bf16
log-softmax keeps only ~3 significant digits, enough to flip the sign of a small loss term.

Tensors: `logits` [N, C] (the predictor's f = h_psi(f_phi(x)), before rescaling), `labels` int64 [N] in [0, C),
`z`, `z_star` [N, D]. Label range is not checked here: that would cost a device sync every step. Bad arguments are
programming errors (ValueError): the user's options are checked by TrainConfig.validate. The terms of Eq. 22 that
use these functions, with the rows they read, are in train/terms/.
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F


RESCALINGS = ("softmax", "sigmoid")

# Stands in for -inf in masked logsumexps: exp(_MASKED - x) is 0 for any real logit, and unlike -inf it cannot
# turn a fully masked row or a 0 * inf in the backward pass into NaN.
_MASKED = -1e30


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _check_logits(logits: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    # Shape slips are programming errors inside the package, not user input: a plain ValueError is right.
    if logits.dim() != 2:
        raise ValueError(f"logits must be [N, C], got shape {tuple(logits.shape)}")
    if labels is not None and (labels.dim() != 1 or labels.shape[0] != logits.shape[0]):
        raise ValueError(f"labels must be [N] = [{logits.shape[0]}], got shape {tuple(labels.shape)}")


def log_rescale(logits: torch.Tensor, rescale: str) -> torch.Tensor:
    """log sigma(f) for every class: log_softmax (Eq. 8) or logsigmoid (Eq. 9), stable as in App. A (Eqs. 25, 27)."""
    if rescale == "softmax":
        return F.log_softmax(_compute_dtype(logits), dim=-1)
    if rescale == "sigmoid":
        return F.logsigmoid(_compute_dtype(logits))
    raise ValueError(f"unknown rescale {rescale!r}; expected one of: {', '.join(RESCALINGS)}")


def normalised_log_rescale(logits: torch.Tensor, rescale: str) -> torch.Tensor:
    """log of sigma(f) normalised to sum 1 over the classes, [N, C]: log_softmax for softmax; for sigmoid, the class
    scores made a distribution (ours: what the unlabelled terms, entropy and the pseudo-labels, read as p)."""
    log_scores = log_rescale(logits, rescale)
    return log_scores - torch.logsumexp(log_scores, dim=1, keepdim=True)


def _log_one_minus_rescale(logits: torch.Tensor, rescale: str) -> torch.Tensor:
    """log(1 - sigma(f)_c) for every class, without ever forming 1 - sigma (which is 0 once sigma rounds to 1).

    sigmoid: 1 - sigmoid(f) = sigmoid(-f). softmax: 1 - softmax_c = sum_{k != c} e^{f_k} / sum_k e^{f_k}, i.e. a
    logsumexp with class c masked out minus the full logsumexp. The mask costs an [N, C, C] tensor, negligible
    for the tens of classes here; a subtraction log(sum - e^{f_c}) would cancel catastrophically for the top class.
    """
    logits = _compute_dtype(logits)
    if rescale == "sigmoid":
        return F.logsigmoid(-logits)
    if rescale != "softmax":
        raise ValueError(f"unknown rescale {rescale!r}; expected one of: {', '.join(RESCALINGS)}")
    num_classes = logits.shape[-1]
    eye = torch.eye(num_classes, dtype=torch.bool, device=logits.device)
    others = torch.where(eye, torch.full((), _MASKED, dtype=logits.dtype, device=logits.device), logits.unsqueeze(-2))
    return torch.logsumexp(others, dim=-1) - torch.logsumexp(logits, dim=-1, keepdim=True)


def cat_cross(logits: torch.Tensor, labels: torch.Tensor, rescale: str = "softmax") -> torch.Tensor:
    """Categorical cross-entropy, Eq. 17: -1/N sum_i log sigma_{y_i}(f_i)."""
    _check_logits(logits, labels)
    log_p = log_rescale(logits, rescale)
    return -log_p.gather(1, labels.long().unsqueeze(1)).mean()


def cat_twin(logits: torch.Tensor, labels: torch.Tensor, rescale: str = "softmax") -> torch.Tensor:
    """Categorical twin-entropy, Eq. 18: -1/N sum_i log[ sigma_{y_i}(f_i) / (1/N sum_j sigma_{y_i}(f_j)) ].

    The denominator runs over the same batch (our reading of the paper's x'_j) and is exact and stable as
    log(1/N sum_j sigma_{y_i}(f_j)) = logsumexp_j log sigma_{y_i}(f_j) - log N, contrary to the paper's remark in
    section 3.3 that it could not be computed stably. One logsumexp per class over the batch suffices: O(N C).
    """
    _check_logits(logits, labels)
    labels = labels.long()
    log_p = log_rescale(logits, rescale)  # [N, C]
    log_numerator = log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
    log_batch_mean = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])  # [C]: log 1/N sum_j sigma_c(f_j)
    return -(log_numerator - log_batch_mean[labels]).mean()


def bin_cross(logits: torch.Tensor, labels: torch.Tensor, rescale: str = "softmax") -> torch.Tensor:
    """Binary cross-entropy, Eq. 19: -1/N sum_i sum_c [ y_ic log sigma(f_i)_c + (1 - y_ic) log(1 - sigma(f_i)_c) ].

    Summed over classes, averaged over the batch. With softmax, log(1 - softmax_c) is a masked logsumexp (see
    `_log_one_minus_rescale`); with sigmoid it is logsigmoid(-f).
    """
    _check_logits(logits, labels)
    is_label = F.one_hot(labels.long(), logits.shape[1]).bool()
    # torch.where, not y * a + (1 - y) * b: both branches are finite, and no 0 * (large) product enters the graph.
    per_class = torch.where(is_label, log_rescale(logits, rescale), _log_one_minus_rescale(logits, rescale))
    return -per_class.sum(dim=1).mean()


def critic(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The critic term, Eq. 20: 1/N sum log D(y_i) + 1/N sum log(1 - D(sigma(f_i))), with D = sigmoid(raw output).

    `real_logits`: the discriminator's raw outputs on one-hot draws from the class prior p(y); `fake_logits`: on
    the model's rescaled predictions of the unlabelled batch. Any shape ([N] or [N, 1]); each is averaged on its own,
    so the two batches may differ in size. Returns the Eq. 20 value itself: the discriminator maximises it (minimise
    `-critic(...)`), the encoder and predictor minimise it (the paper's minimax form, Eq. 15 up to 1/2 and log 2).
    log(1 - sigmoid(d)) = logsigmoid(-d) keeps it finite when D saturates.
    """
    real_logits, fake_logits = _compute_dtype(real_logits), _compute_dtype(fake_logits)
    return F.logsigmoid(real_logits).mean() + F.logsigmoid(-fake_logits).mean()


def critic_nonsaturating(fake_logits: torch.Tensor) -> torch.Tensor:
    """Optional model-side replacement for Eq. 20: -1/N sum log D(sigma(f_i)), to be minimised by the model.

    Not in the paper. Same fixed point as the minimax form, but its gradient does not vanish when the discriminator
    confidently rejects the fakes (log(1 - D) is flat there, -log D is steep): the usual GAN "non-saturating" trick.
    The discriminator still maximises `critic`.
    """
    return -F.logsigmoid(_compute_dtype(fake_logits)).mean()


def latent_infonce(z: torch.Tensor, z_star: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Latent alignment InfoNCE, Eq. 21: -1/N sum_i log[ e^{s_ii} / (1/N sum_j e^{s_ij}) ].

    s_ij = cos(z_i, z*_j) / temperature; temperature 1 is the paper's. j = i is included in the denominator mean
    (Eq. 21's sum runs over all j). Computed as -mean_i [ s_ii - (logsumexp_j s_ij - log N) ]. Normalisation uses
    F.normalize's eps, so a zero latent scores 0 against everything instead of NaN. Gradients flow through both
    z and z_star (the paper uses the same network for both, without a delayed copy).
    """
    if z.dim() != 2 or z.shape != z_star.shape:
        raise ValueError(f"z and z_star must both be [N, D], got {tuple(z.shape)} and {tuple(z_star.shape)}")
    if not temperature > 0:
        raise ValueError(f"latent temperature must be > 0, got {temperature}")
    z_unit = F.normalize(_compute_dtype(z), dim=1)
    z_star_unit = F.normalize(_compute_dtype(z_star), dim=1)
    scores = z_unit @ z_star_unit.T / temperature  # [N, N], row i: x_i against every z*_j
    log_batch_mean = torch.logsumexp(scores, dim=1) - math.log(scores.shape[0])
    return -(scores.diagonal() - log_batch_mean).mean()
