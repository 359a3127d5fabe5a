"""Both matching forms against autograd through a naive unroll of the student steps: TESLA's
two-pass gradient equals the unroll with stop-gradient on phi_t (also with dropout in the
student, whose masks both passes share, with the reference's WBCE eps, and with RepBlend's
frozen backbone and blended representations, whose lam and pi both passes share), the full
unroll equals it without stop-gradient, and the learned lrs' gradients follow the chosen rule.
The forms are taken from the registry: every matcher registered with `stop_gradient=` is held to
that unroll, and every matcher to what any matching step must do."""
import math

import pytest
import torch

from vldistill.algorithms.losses import soft_contrastive_loss
from vldistill.algorithms.matching import MATCHERS, MatchOptions, sample_batches, tesla_match, unroll_match
from vldistill.models.image_towers import ConvNet
from vldistill.models.student import Blend, DualEncoder, FunctionalStudent
from vldistill.runtime.seeds import seeded
from vldistill.algorithms.similarity import build_similarity


def _setup(sim_kind: str, seed: int = 0, dropout: float = 0.0, logit_scale: float | None = None,
           frozen_backbone: bool = False, blend_alpha: float = 0.0):
    torch.manual_seed(seed)
    model = DualEncoder(ConvNet(8, width=4, depth=1), text_dim=6, temperature=0.5, dropout=dropout,
                        frozen_backbone=frozen_backbone).double()
    student = FunctionalStudent(model, logit_scale, blend_alpha)
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


def _naive(student, images, texts, sim, lr_img, lr_txt, start, target, batches, options,
           stop_gradient=True, seeds=None):
    """Autograd through the T steps written out: phi_{t+1} = phi_t - eta g_t, each step's
    dropout (and blend) drawn once from seeds[t]; stop_gradient detaches phi_t before each step
    (TESLA)."""
    seeds = list(range(len(batches))) if seeds is None else seeds
    eta_img = torch.tensor(lr_img, dtype=torch.float64, requires_grad=True)
    eta_txt = torch.tensor(lr_txt, dtype=torch.float64, requires_grad=True)
    phi, psi = (p.clone().requires_grad_(True) for p in start)
    sum_img, sum_txt = 0.0, 0.0
    for idx, seed in zip(batches, seeds):
        if stop_gradient:
            phi, psi = phi.detach().requires_grad_(True), psi.detach().requires_grad_(True)
        with seeded(seed):
            logits = student.logits(phi, psi, images[idx], texts[idx])
        loss = soft_contrastive_loss(logits, sim.matrix(idx), options.loss, options.loss_eps)
        g_img, g_txt = torch.autograd.grad(loss, (phi, psi), create_graph=True)
        sum_img, sum_txt = sum_img + g_img, sum_txt + g_txt
        phi, psi = phi - eta_img * g_img, psi - eta_txt * g_txt
    if stop_gradient:       # phi_T = phi_s - eta G, the g_t functions of the set only
        phi, psi = start[0] - eta_img * sum_img, start[1] - eta_txt * sum_txt
    num_img, num_txt = (phi - target[0]).pow(2).sum(), (psi - target[1]).pow(2).sum()
    d_img = (start[0] - target[0]).pow(2).sum()
    d_txt = (start[1] - target[1]).pow(2).sum()
    merged = options.merge_branches
    total = (num_img + num_txt) / (d_img + d_txt) if merged else num_img / d_img + num_txt / d_txt
    if options.lr_grad == "branch":     # each lr from its own branch's ratio
        lr_grads = [torch.autograd.grad(num / d, eta, retain_graph=True)[0]
                    for num, d, eta in ((num_img, d_img, eta_img), (num_txt, d_txt, eta_txt))]
    total.backward()
    if options.lr_grad != "branch":
        lr_grads = [eta_img.grad, eta_txt.grad]
    return float(total.detach()), [float(g) for g in lr_grads]


def _compare(match, stop_gradient, sim_kind, options, steps, dropout=0.0, step_seeds=None, **model):
    student, images, texts, sim, start, target = _setup(sim_kind, dropout=dropout, **model)
    batches = sample_batches(len(images), 3, steps, torch.Generator().manual_seed(1))
    result = match(student, images, texts, sim, 0.3, 0.2, start, target, batches, options, step_seeds)
    fast = [images.grad.clone(), texts.grad.clone()] + [p.grad.clone() for p in sim.parameters()]
    for t in [images, texts, *sim.parameters()]:
        t.grad = None
    total, lr_grads = _naive(student, images, texts, sim, 0.3, 0.2, start, target, batches, options,
                             stop_gradient, step_seeds)
    slow = [images.grad, texts.grad] + [p.grad for p in sim.parameters()]
    assert result.loss == pytest.approx(total, rel=1e-9)
    assert [result.grad_lr_img, result.grad_lr_txt] == pytest.approx(lr_grads, rel=1e-7)
    for a, b in zip(fast, slow):
        assert b is not None and float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    return fast


CASES = [("lowrank", "infonce", False), ("lowrank", "wbce", True), ("full", "bce", False),
         ("identity", "infonce", False), ("lowrank", "cwcl", False), ("full", "kl", True)]

# (matcher, stop-gradient) of every registered matcher that names the unroll it equals
UNROLLED = [(MATCHERS.get(n), MATCHERS.info(n)["stop_gradient"]) for n in MATCHERS.names()
            if "stop_gradient" in MATCHERS.info(n)]
UNROLLED_IDS = [n for n in MATCHERS.names() if "stop_gradient" in MATCHERS.info(n)]


@pytest.mark.parametrize("steps", [1, 3, 8])
@pytest.mark.parametrize("sim_kind,loss_kind,merge", CASES)
@pytest.mark.parametrize("match,stop", UNROLLED, ids=UNROLLED_IDS)
def test_every_matcher_equals_autograd_through_its_unroll(match, stop, steps, sim_kind, loss_kind, merge):
    """TESLA: the unroll with stop-gradient on phi_t; the full unroll: without it."""
    _compare(match, stop, sim_kind, MatchOptions(loss_kind, merge_branches=merge), steps)


def check_matcher(name: str) -> None:
    """Any registered matcher, with its default options: a finite positive loss, finite lr
    gradients, finite gradients that reach the images, the texts and the similarity -- and the
    same numbers again from the same inputs and step seeds."""
    runs = []
    for _ in range(2):
        student, images, texts, sim, start, target = _setup("lowrank")
        batches = sample_batches(len(images), 3, 3, torch.Generator().manual_seed(1))
        result = MATCHERS.get(name)(student, images, texts, sim, 0.3, 0.2, start, target, batches,
                                    MatchOptions("wbce"), [4, 5, 6], **MATCHERS.options(name))
        grads = [images.grad, texts.grad, *(p.grad for p in sim.parameters())]
        assert result.loss > 0 and all(map(math.isfinite, (result.loss, result.grad_lr_img, result.grad_lr_txt)))
        assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
        runs.append((result, grads))
    assert runs[0][0] == runs[1][0] and all(map(torch.equal, runs[0][1], runs[1][1]))


@pytest.mark.parametrize("name", MATCHERS.names())
def test_every_matcher_moves_the_whole_set_and_repeats_itself(name):
    check_matcher(name)


def test_tesla_and_the_full_unroll_differ_beyond_one_step():
    """The stop-gradient drops the second-order terms: same loss, other gradient (T > 1)."""
    options = MatchOptions("infonce")
    grads = [_compare(match, stop, "identity", options, 3)[0] for match, stop in
             ((tesla_match, True), (unroll_match, False))]
    cosine = torch.nn.functional.cosine_similarity(grads[0].flatten(), grads[1].flatten(), dim=0)
    assert 0.0 < float(cosine) < 0.9999


def test_dropout_masks_are_shared_by_both_passes():
    """With dropout in the text head TESLA still equals the stop-gradient unroll drawn with the
    same per-step seeds -- and another draw of the masks gives another gradient."""
    options = MatchOptions("wbce", loss_eps=1e-6)
    seeds = [11, 12, 13]
    first = _compare(tesla_match, True, "lowrank", options, 3, dropout=0.3, step_seeds=seeds)
    other = _compare(tesla_match, True, "lowrank", options, 3, dropout=0.3, step_seeds=[21, 22, 23])
    assert not torch.allclose(first[0], other[0])


REPBLEND = {"frozen_backbone": True, "blend_alpha": 1.0}       # heads over a frozen backbone, blended


@pytest.mark.parametrize("match,stop", UNROLLED, ids=UNROLLED_IDS)
@pytest.mark.parametrize("sim_kind,loss_kind,merge", CASES[:2])
def test_blended_steps_equal_autograd_through_the_unroll(match, stop, sim_kind, loss_kind, merge):
    """RepBlend: phi is the image head, the pixels' gradient comes through the frozen backbone,
    and each step blends its representations with one lam and pi drawn from the step's seed --
    the same in TESLA's two passes, so its gradient is still the stop-gradient unroll's (with
    dropout on too). Blending changes the gradient, and so does another draw."""
    options = MatchOptions(loss_kind, merge_branches=merge)
    blended = _compare(match, stop, sim_kind, options, 3, 0.2, [5, 6, 7], **REPBLEND)
    redrawn = _compare(match, stop, sim_kind, options, 3, 0.2, [8, 9, 10], **REPBLEND)
    plain = _compare(match, stop, sim_kind, options, 3, 0.2, [5, 6, 7], frozen_backbone=True)
    assert not torch.allclose(blended[0], plain[0]) and not torch.allclose(blended[0], redrawn[0])


def test_blending_with_lambda_one_is_the_unblended_method(monkeypatch):
    """lam = 1 leaves every representation as it is: bit for bit the unblended gradients."""
    options = MatchOptions("wbce", merge_branches=True)
    plain = _compare(tesla_match, True, "lowrank", options, 3, frozen_backbone=True)
    monkeypatch.setattr(Blend, "draw", staticmethod(lambda alpha, b: Blend(1.0, torch.randperm(b))))
    forced = _compare(tesla_match, True, "lowrank", options, 3, **REPBLEND)
    assert all(torch.equal(a, b) for a, b in zip(plain, forced))


@pytest.mark.parametrize("match,stop", UNROLLED, ids=UNROLLED_IDS)
def test_merged_branches_lr_gradients_follow_the_chosen_rule(match, stop):
    """branch (the LoRS code): d(||phi_s - eta G - phi*||^2 / D_img)/d eta_img even when the
    loss merges both branches; exact: the merged loss's own gradient. The data gradients are
    the merged loss's either way."""
    branch = MatchOptions("wbce", merge_branches=True, lr_grad="branch")
    exact = MatchOptions("wbce", merge_branches=True, lr_grad="exact")
    student, images, texts, sim, start, target = _setup("lowrank")
    batches = sample_batches(len(images), 3, 3, torch.Generator().manual_seed(1))
    r_branch = match(student, images, texts, sim, 0.3, 0.2, start, target, batches, branch)
    r_exact = match(student, images, texts, sim, 0.3, 0.2, start, target, batches, exact)
    _compare(match, stop, "lowrank", branch, 3)
    assert r_exact.grad_lr_img != pytest.approx(r_branch.grad_lr_img, rel=1e-3)
    if stop:                    # G held constant: the merged denominator only rescales each lr's
        d_img = float((start[0] - target[0]).pow(2).sum())
        d_txt = float((start[1] - target[1]).pow(2).sum())
        share = d_img / (d_img + d_txt)
        assert r_exact.grad_lr_img == pytest.approx(share * r_branch.grad_lr_img, rel=1e-9)
        assert r_exact.grad_lr_txt == pytest.approx((1 - share) * r_branch.grad_lr_txt, rel=1e-9)


def test_inner_logit_scale_replaces_the_temperature():
    student, images, texts, *_ = _setup("identity")
    scaled = FunctionalStudent(student.model, logit_scale=2.5)
    phi, psi = student.flat_params()
    torch.testing.assert_close(scaled.logits(phi, psi, images[:3], texts[:3]) * 2.0,   # 1/0.5 = 2
                               student.logits(phi, psi, images[:3], texts[:3]) * 2.5)


def test_batches_cover_the_set_before_repeating():
    batches = sample_batches(10, 3, 6, torch.Generator().manual_seed(0))
    first_pass = torch.cat(batches[:3])
    assert len(set(first_pass.tolist())) == 9          # no repeats within a pass
    assert all(len(b) == 3 for b in batches)


def test_fresh_batches_are_each_the_head_of_a_new_permutation():
    """VL-distill's draw: randperm(n)[:b] every step, from the same generator stream."""
    batches = sample_batches(10, 4, 5, torch.Generator().manual_seed(3), draw="fresh")
    g = torch.Generator().manual_seed(3)
    expected = [torch.randperm(10, generator=g)[:4] for _ in range(5)]
    assert all(torch.equal(a, b) for a, b in zip(batches, expected))


@pytest.mark.parametrize("match", [tesla_match, unroll_match])
def test_merged_runs_also_give_the_sum_the_reference_logs(match):
    """With merged branches the LoRS / RepBlend code minimises (r_img + r_txt) / (d_img + d_txt)
    but logs its 'Loss/grand' as r_img / d_img + r_txt / d_txt: the unmerged loss of the same
    step. `branch_sum` is that number, merged or not."""
    student, images, texts, sim, start, target = _setup("lowrank")
    batches = sample_batches(len(images), 3, 3, torch.Generator().manual_seed(1))
    merged = match(student, images, texts, sim, 0.3, 0.2, start, target, batches,
                   MatchOptions("wbce", merge_branches=True))
    apart = match(student, images, texts, sim, 0.3, 0.2, start, target, batches, MatchOptions("wbce"))
    assert merged.branch_sum == pytest.approx(apart.loss, rel=1e-12)
    assert apart.branch_sum == pytest.approx(apart.loss, rel=1e-12)
    assert merged.loss != pytest.approx(merged.branch_sum, rel=1e-3)
