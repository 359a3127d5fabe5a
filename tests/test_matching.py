"""TESLA's two-pass gradient equals autograd through a naive unroll with stop-gradient on phi_t."""
import pytest
import torch

from vldistill.losses import soft_contrastive_loss
from vldistill.matching import MatchOptions, sample_batches, tesla_match
from vldistill.models.image_towers import ConvNet
from vldistill.models.student import DualEncoder, FunctionalStudent
from vldistill.similarity import build_similarity


def _setup(sim_kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = DualEncoder(ConvNet(8, width=4, depth=1), text_dim=6, temperature=0.5).double()
    student = FunctionalStudent(model)
    n = 7
    images = torch.randn(n, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    texts = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    sim = build_similarity(sim_kind, n, rank=2, alpha=1.5).double()
    with torch.no_grad():               # move off the initialization so every parameter matters
        for p in sim.parameters():
            p.add_(0.3 * torch.randn_like(p))
    start = student.flat_params()
    target = tuple(p + 0.05 * torch.randn_like(p) for p in start)
    return student, images, texts, sim, start, target


def _naive(student, images, texts, sim, lr_img, lr_txt, start, target, batches, loss_kind, merge):
    """Unroll keeping the graph through g_t, with phi_t detached before each step (TESLA)."""
    eta_img = torch.tensor(lr_img, dtype=torch.float64, requires_grad=True)
    eta_txt = torch.tensor(lr_txt, dtype=torch.float64, requires_grad=True)
    phi, psi = start
    sum_img, sum_txt = 0.0, 0.0
    for idx in batches:
        phi_c = phi.detach().requires_grad_(True)
        psi_c = psi.detach().requires_grad_(True)
        loss = soft_contrastive_loss(student.logits(phi_c, psi_c, images[idx], texts[idx]),
                                     sim.matrix(idx), loss_kind)
        g_img, g_txt = torch.autograd.grad(loss, (phi_c, psi_c), create_graph=True)
        sum_img, sum_txt = sum_img + g_img, sum_txt + g_txt
        phi, psi = phi_c - eta_img * g_img, psi_c - eta_txt * g_txt
    num_img = (start[0] - eta_img * sum_img - target[0]).pow(2).sum()
    num_txt = (start[1] - eta_txt * sum_txt - target[1]).pow(2).sum()
    d_img = (start[0] - target[0]).pow(2).sum()
    d_txt = (start[1] - target[1]).pow(2).sum()
    total = (num_img + num_txt) / (d_img + d_txt) if merge else num_img / d_img + num_txt / d_txt
    total.backward()
    return total, eta_img.grad, eta_txt.grad


@pytest.mark.parametrize("steps", [1, 3, 8])
@pytest.mark.parametrize("sim_kind,loss_kind,merge", [
    ("lowrank", "infonce", False), ("lowrank", "wbce", True), ("full", "bce", False),
    ("identity", "infonce", False), ("lowrank", "cwcl", False), ("full", "kl", True),
])
def test_tesla_gradient_equals_naive_unroll(steps, sim_kind, loss_kind, merge):
    student, images, texts, sim, start, target = _setup(sim_kind)
    batches = sample_batches(len(images), 3, steps, torch.Generator().manual_seed(1))
    lr_img, lr_txt = 0.3, 0.2

    result = tesla_match(student, images, texts, sim, lr_img, lr_txt, start, target, batches,
                         MatchOptions(loss_kind, merge_branches=merge))
    fast = [images.grad.clone(), texts.grad.clone()] + [p.grad.clone() for p in sim.parameters()]

    for t in [images, texts, *sim.parameters()]:
        t.grad = None
    total, g_lr_img, g_lr_txt = _naive(student, images, texts, sim, lr_img, lr_txt, start, target,
                                       batches, loss_kind, merge)
    slow = [images.grad, texts.grad] + [p.grad for p in sim.parameters()]

    assert result.loss == pytest.approx(float(total.detach()), rel=1e-9)
    assert result.grad_lr_img == pytest.approx(float(g_lr_img), rel=1e-7)
    assert result.grad_lr_txt == pytest.approx(float(g_lr_txt), rel=1e-7)
    for a, b in zip(fast, slow):
        assert b is not None and float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)


def test_batches_cover_the_set_before_repeating():
    batches = sample_batches(10, 3, 6, torch.Generator().manual_seed(0))
    first_pass = torch.cat(batches[:3])
    assert len(set(first_pass.tolist())) == 9          # no repeats within a pass
    assert all(len(b) == 3 for b in batches)
