"""Each loss against a direct, loop-based implementation of its formula."""
import math

import pytest
import torch

from vldistill.algorithms.losses import LOSSES, soft_contrastive_loss


def _rand(b=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, b, generator=g, dtype=torch.float64) * 3
    target = torch.rand(b, b, generator=g, dtype=torch.float64) * 1.4 - 0.2   # also outside [0, 1]
    return logits, target


def _log_softmax_row(z, i):
    m = max(z[i])
    return [z[i][j] - m - math.log(sum(math.exp(v - m) for v in z[i])) for j in range(len(z))]


def _infonce_rows(z, s, normalize=False):
    b, total = len(z), 0.0
    for i in range(b):
        lp = _log_softmax_row(z, i)
        weight_sum = sum(s[i]) + 1e-6 if normalize else 1.0
        total += -sum(s[i][j] * lp[j] for j in range(b)) / weight_sum
    return total / b


def _t(m):
    return [list(r) for r in zip(*m)]


def _sig(x):
    return 1 / (1 + math.exp(-x))


def direct(kind, logits, target):
    z, s = logits.tolist(), target.tolist()
    b = len(z)
    if kind in ("infonce", "ence"):
        return 0.5 * (_infonce_rows(z, s) + _infonce_rows(_t(z), _t(s)))
    if kind == "cwcl":
        return 0.5 * (_infonce_rows(z, s, True) + _infonce_rows(_t(z), _t(s), True))
    if kind == "kl":
        def rows(z, s):
            total = 0.0
            for i in range(b):
                lq = _log_softmax_row(z, i)
                lp = _log_softmax_row([[10 * v for v in r] for r in s], i)
                total += sum(math.exp(lp[j]) * (lp[j] - lq[j]) for j in range(b))
            return total / (b * b)
        return 0.5 * (rows(z, s) + rows(_t(z), _t(s)))
    entries = [(z[i][j], s[i][j]) for i in range(b) for j in range(b)]
    bce = [-(t * math.log(_sig(v)) + (1 - t) * math.log(1 - _sig(v))) for v, t in entries]
    if kind == "bce":
        return sum(bce) / len(bce)
    if kind == "wbce":
        pos = [l for l, (_, t) in zip(bce, entries) if t > 0.5]
        neg = [l for l, (_, t) in zip(bce, entries) if t <= 0.5]
        return 0.5 * (sum(pos) / max(len(pos), 1) + sum(neg) / max(len(neg), 1))
    if kind == "mse":
        return sum((_sig(v) - t) ** 2 for v, t in entries) / len(entries)
    raise KeyError(kind)


@pytest.mark.parametrize("kind", sorted(LOSSES))
@pytest.mark.parametrize("seed", [0, 1])
def test_loss_equals_direct_formula(kind, seed):
    logits, target = _rand(seed=seed)
    assert float(soft_contrastive_loss(logits, target, kind)) == pytest.approx(direct(kind, logits, target), rel=1e-9)


def test_infonce_with_identity_is_clip_cross_entropy():
    logits, _ = _rand()
    labels = torch.arange(len(logits))
    clip = 0.5 * (torch.nn.functional.cross_entropy(logits, labels)
                  + torch.nn.functional.cross_entropy(logits.t(), labels))
    eye = torch.eye(len(logits), dtype=logits.dtype)
    torch.testing.assert_close(soft_contrastive_loss(logits, eye, "infonce"), clip)
    torch.testing.assert_close(soft_contrastive_loss(logits, eye, "cwcl"), clip, rtol=1e-5, atol=0)
    torch.testing.assert_close(soft_contrastive_loss(logits, eye, "ence"), clip)


def test_wbce_balances_positives_and_negatives():
    """With S = I one positive per row against b - 1 negatives: WBCE weighs both groups equally,
    plain BCE is dominated by negatives."""
    b = 8
    eye = torch.eye(b, dtype=torch.float64)
    wrong_on_positives = torch.full((b, b), -4.0, dtype=torch.float64)  # all predicted negative
    wbce = float(soft_contrastive_loss(wrong_on_positives, eye, "wbce"))
    bce = float(soft_contrastive_loss(wrong_on_positives, eye, "bce"))
    pos_loss = -math.log(_sig(-4.0))
    neg_loss = -math.log(1 - _sig(-4.0))
    assert wbce == pytest.approx(0.5 * (pos_loss + neg_loss))
    assert bce == pytest.approx((pos_loss + (b - 1) * neg_loss) / b)
    assert wbce > 3 * bce


@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("kind", LOSSES.names())
def test_losses_and_their_gradients_finite_for_extreme_logits(kind, eps):
    """A saturated student (|z| = 1e4) must not turn a distillation step into NaN/inf."""
    logits = torch.tensor([[1e4, -1e4], [-1e4, 1e4]], requires_grad=True)
    target = torch.tensor([[1.5, -0.5], [0.2, 1.0]])
    value = soft_contrastive_loss(logits, target, kind, eps)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()


def test_unknown_loss_lists_known_ones():
    with pytest.raises(ValueError, match="known: .*infonce"):
        soft_contrastive_loss(torch.zeros(2, 2), torch.eye(2), "hinge")
