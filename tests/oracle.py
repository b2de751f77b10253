"""The float64 oracle the EFL implementations are tested against."""
import torch


def reference_efl(
    logits, labels, pos_neg, gamma_b=2.0, scale=8.0, alpha=0.25, normalizer=1.0,
    focusing=True, weighting=True, quality=None,
):  # fmt: skip
    """
    EFL (or, given ``quality``, EQFL) written term by term in float64 with a dense target, its gradient by
    autograd, and the per-class sums of |gradient| over positive and negative cells.
    Returns (loss, grad, pos_sum, neg_sum).
    """
    z = logits.detach().double().requires_grad_()
    num_classes = z.shape[1]
    valid = labels >= 0
    fg = valid & (labels < num_classes)
    y = torch.zeros_like(z)
    y[fg.nonzero().squeeze(1), labels[fg]] = 1.0
    gamma_j = gamma_b + scale * (1.0 - pos_neg.double())
    gamma = gamma_j if focusing else torch.full_like(gamma_j, gamma_b)
    weight = gamma_j / gamma_b if weighting else torch.ones_like(gamma_j)
    if quality is None:
        z_t = torch.where(y > 0, z, -z)  # p_t = sigmoid(z_t), written in logs so that |z| = 100 stays exact
        alpha_t = torch.where(y > 0, alpha, 1 - alpha)
        cells = alpha_t * weight * torch.sigmoid(-z_t) ** gamma * -torch.nn.functional.logsigmoid(z_t)
    else:
        t = y * quality.double()[:, None]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none")
        cells = weight * (t - torch.sigmoid(z)).abs() ** gamma * bce
    loss = cells[valid].sum() / normalizer
    (grad,) = torch.autograd.grad(loss, z)
    magnitude = grad.abs() * valid[:, None]
    return loss.detach(), grad, (magnitude * y).sum(0), (magnitude * (1 - y)).sum(0)
