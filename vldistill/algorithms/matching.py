"""One bi-trajectory matching iteration: TESLA's constant-memory form, and MTT's full unroll.

From an expert snapshot (phi_s, psi_s) the student takes T SGD steps on synthetic
mini-batches, phi_{t+1} = phi_t - eta_img g_t (and psi likewise with eta_txt), and should land
on the expert's later snapshot (phi*, psi*). With stop-gradient on the student parameters
phi_t (TESLA), the end point is phi_T = phi_s - eta G with G = sum_t g_t, so

    L = ||phi_s - eta_img G_img - phi*||^2 / ||phi_s - phi*||^2  +  (same for the text head)

and dL/dg_t = dL/dG =: c is the same vector for every step. Hence

    dL/d(X, Y, S) = sum_t d<c, g_t>/d(X, Y, S),

which we get in two passes without ever holding more than one step's graph:
pass 1 runs the T steps with no graph and sums G (giving c); pass 2 replays the same steps
from phi_s, and at each phi_t (a constant) builds g_t with a graph, backpropagates <c, g_t>
into the synthetic batch, and moves on with phi_{t+1} = phi_t - eta g_t. Memory is that of one
step for any T; the result equals autograd through the naive unroll with stop-gradient on
phi_t (tests/test_matching.py checks this).

Randomness inside a student step -- dropout in the heads, and RepBlend's blend of the
representations (lam ~ Beta(a, a) and a permutation of the mini-batch, drawn by
`FunctionalStudent` when its blend_alpha > 0) -- is drawn from a per-step seed, the same in both
passes, so pass 2 differentiates exactly the g_t that pass 1 summed into G.

`unroll_match` is the form VL-distill uses: the whole graph of the T steps is kept and
differentiated without stop-gradient (memory grows with T). Both are registered in `MATCHERS`
(`distill.matching`), where another algorithm registers with its own options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .losses import soft_contrastive_loss
from ..models.student import FunctionalStudent
from ..registry import Registry
from ..runtime.seeds import seeded
from .similarity import Similarity


@dataclass
class MatchResult:
    """Matching loss of one iteration and the closed-form gradients of the two lrs.

    Gradients for images, texts and similarity parameters are accumulated into their `.grad`.
    """

    loss: float
    loss_img: float             # per-branch ratios (with merge_branches: each branch's share)
    loss_txt: float
    grad_lr_img: float
    grad_lr_txt: float
    branch_sum: float = float("nan")    # sum of each branch's ratio over its own distance: `loss`
                                        # unmerged; merged, what the LoRS / RepBlend code logs


def sample_batches(n: int, batch: int, steps: int, generator: torch.Generator,
                   draw: str = "walk") -> list[torch.Tensor]:
    """T mini-batches. walk (LoRS): consecutive chunks of a permutation, reshuffling when a pass
    over the set runs out; fresh (VL-distill): each the first `batch` of a new permutation."""
    if draw == "fresh":
        return [torch.randperm(n, generator=generator)[:batch] for _ in range(steps)]
    batches, order, pos = [], torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, generator=generator), 0
        batches.append(order[pos:pos + batch])
        pos += batch
    return batches


def _views(student: FunctionalStudent, image: torch.Tensor, text: torch.Tensor) -> list[torch.Tensor]:
    """Per-parameter views of a (phi-shaped, psi-shaped) pair of flat vectors, sharing memory."""
    return [*student.image_layout.unflatten(image).values(), *student.text_layout.unflatten(text).values()]


def _step_gradients(student: FunctionalStudent, position: list[torch.Tensor], x: torch.Tensor,
                    y: torch.Tensor, target: torch.Tensor, loss_kind: str, create_graph: bool,
                    seed: int, loss_eps: float = 0.0) -> list[torch.Tensor]:
    """g_t of every parameter (image tower, then text head) from one autograd call.

    The gradient is taken w.r.t. per-parameter leaves, not the flat vectors, so no flat
    gradient is concatenated (and allocated) per step: for a 35M-parameter tower that copy
    and its fresh memory cost a plain step's worth of time on a CPU. The forward draws its
    dropout masks (and blend) from `seed`.
    """
    leaves = [p.detach().requires_grad_(True) for p in position]
    names = student.image_layout.names + student.text_layout.names
    with seeded(seed, x.device):
        logits = student.logits_from(dict(zip(names, leaves)), x, y)
    loss = soft_contrastive_loss(logits, target, loss_kind, loss_eps)
    return list(torch.autograd.grad(loss, leaves, create_graph=create_graph, materialize_grads=True))


@dataclass(frozen=True)
class MatchOptions:
    """How an iteration matches (the same for every iteration of a run)."""

    loss: str = "infonce"           # the student steps' contrastive loss (`vldistill.algorithms.losses`)
    loss_eps: float = 0.0           # that loss's eps (0: exact)
    merge_branches: bool = False    # one ratio with summed numerators and denominators
    lr_grad: str = "exact"          # exact: d(matching loss)/d(lr) | branch: each lr from its own
                                    # branch's ratio, also when merged (the LoRS code)


def _ratios(res_img: torch.Tensor, res_txt: torch.Tensor, dist_img: torch.Tensor, dist_txt: torch.Tensor,
            merge: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each branch's share of the matching loss, and the denominators it used."""
    denom_img, denom_txt = (dist_img + dist_txt,) * 2 if merge else (dist_img, dist_txt)
    return res_img.pow(2).sum() / denom_img, res_txt.pow(2).sum() / denom_txt, denom_img, denom_txt


def _branch_sum(res_img: torch.Tensor, res_txt: torch.Tensor, dist_img: torch.Tensor,
                dist_txt: torch.Tensor) -> float:
    return float(res_img.detach().pow(2).sum() / dist_img + res_txt.detach().pow(2).sum() / dist_txt)


def tesla_match(student: FunctionalStudent, images: torch.Tensor, texts: torch.Tensor,
                similarity: Similarity, lr_img: float, lr_txt: float,
                start: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor],
                batches: list[torch.Tensor], options: MatchOptions,
                step_seeds: list[int] | None = None) -> MatchResult:
    """Run one matching iteration; accumulate d(loss)/d(images, texts, similarity) into `.grad`.

    Args:
        student: the functional student (its module's own weights are not used).
        images, texts: the synthetic set (N, 3, H, W) and (N, d_text), leaves with requires_grad.
        similarity: learned (or identity) soft targets; its parameters receive gradients.
        lr_img, lr_txt: the current student lrs (eta), as plain numbers.
        start: (phi_s, psi_s) expert snapshot; target: (phi*, psi*) the snapshot M epochs later.
        batches: the T index sets of the synthetic mini-batches (see `sample_batches`).
        options: loss, merged branches, lr-gradient rule (`MatchOptions`).
        step_seeds: the seed of each step's random draws (dropout, blend); default: step t uses t.
    """
    step_seeds = list(range(len(batches))) if step_seeds is None else step_seeds
    phi_s, psi_s = (p.detach() for p in start)
    phi_star, psi_star = (p.detach() for p in target)
    x_all, y_all = images.detach(), texts.detach()

    # step lr of each parameter; the student's position phi_t, psi_t moves in place, per parameter
    lrs = [lr_img] * len(student.image_layout.names) + [lr_txt] * len(student.text_layout.names)

    # pass 1: the T student steps, no graph; sum of the step gradients
    grad_sum_img, grad_sum_txt = torch.zeros_like(phi_s), torch.zeros_like(psi_s)
    grad_sum = _views(student, grad_sum_img, grad_sum_txt)
    position = _views(student, phi_s.clone(), psi_s.clone())
    for idx, seed in zip(batches, step_seeds):
        with torch.no_grad():
            soft_target = similarity.matrix(idx).to(x_all.device)
        g = _step_gradients(student, position, x_all[idx], y_all[idx], soft_target, options.loss,
                            False, seed, options.loss_eps)
        torch._foreach_add_(grad_sum, g)
        torch._foreach_sub_(position, torch._foreach_mul(g, lrs))      # phi - lr * g

    # the matching loss and dL/dG (the same for every step)
    res_img = phi_s - lr_img * grad_sum_img - phi_star
    res_txt = psi_s - lr_txt * grad_sum_txt - psi_star
    dist_img = (phi_s - phi_star).pow(2).sum()
    dist_txt = (psi_s - psi_star).pow(2).sum()
    loss_img, loss_txt, denom_img, denom_txt = _ratios(res_img, res_txt, dist_img, dist_txt,
                                                       options.merge_branches)
    coef_img = -2.0 * lr_img * res_img / denom_img          # dL/dG_img
    coef_txt = -2.0 * lr_txt * res_txt / denom_txt

    # pass 2: replay the steps; at each, backpropagate <c, g_t> into the synthetic batch
    learn_sim = any(p.requires_grad for p in similarity.parameters())
    coef = _views(student, coef_img, coef_txt)
    position = _views(student, phi_s.clone(), psi_s.clone())
    for idx, seed in zip(batches, step_seeds):
        x = x_all[idx].requires_grad_(images.requires_grad)
        y = y_all[idx].requires_grad_(texts.requires_grad)
        sim_batch = [p.detach().requires_grad_(learn_sim) for p in similarity.params(idx)]
        soft_target = similarity.matrix_from(sim_batch, len(idx)).to(x_all.device)
        g = _step_gradients(student, position, x, y, soft_target, options.loss, True, seed,
                            options.loss_eps)
        wrt = [t for t in (x, y, *sim_batch) if t.requires_grad]
        linked = [(g_p, c_p) for g_p, c_p in zip(g, coef) if g_p.requires_grad]
        if wrt and linked:  # d<c, g_t>/d(x, y, S_I): c enters as grad_outputs, no product is formed
            grads = iter(torch.autograd.grad([g_p for g_p, _ in linked], wrt,
                                             grad_outputs=[c_p for _, c_p in linked]))
            if x.requires_grad:
                _accumulate(images, idx, next(grads))
            if y.requires_grad:
                _accumulate(texts, idx, next(grads))
            if learn_sim:
                similarity.add_grad(idx, list(grads))
        torch._foreach_sub_(position, torch._foreach_mul([g_p.detach() for g_p in g], lrs))

    # d(ratio)/d(eta) = -2 <res, G> / denom, per branch (the LoRS code's denominators on request)
    lr_denom_img, lr_denom_txt = (dist_img, dist_txt) if options.lr_grad == "branch" else (denom_img, denom_txt)
    return MatchResult(
        loss=float(loss_img + loss_txt), loss_img=float(loss_img), loss_txt=float(loss_txt),
        grad_lr_img=float(-2.0 * (res_img * grad_sum_img).sum() / lr_denom_img),
        grad_lr_txt=float(-2.0 * (res_txt * grad_sum_txt).sum() / lr_denom_txt),
        branch_sum=_branch_sum(res_img, res_txt, dist_img, dist_txt),
    )


def unroll_match(student: FunctionalStudent, images: torch.Tensor, texts: torch.Tensor,
                 similarity: Similarity, lr_img: float, lr_txt: float,
                 start: tuple[torch.Tensor, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor],
                 batches: list[torch.Tensor], options: MatchOptions,
                 step_seeds: list[int] | None = None) -> MatchResult:
    """MTT's full unroll, as VL-distill matches: the graph of all T steps is kept and
    differentiated end to end, second-order terms through phi_t included (no stop-gradient).
    Same arguments and result as `tesla_match`; memory grows linearly with T."""
    step_seeds = list(range(len(batches))) if step_seeds is None else step_seeds
    phi_s, psi_s = (p.detach() for p in start)
    phi_star, psi_star = (p.detach() for p in target)
    eta_img = torch.tensor(lr_img, dtype=phi_s.dtype, device=phi_s.device, requires_grad=True)
    eta_txt = torch.tensor(lr_txt, dtype=phi_s.dtype, device=phi_s.device, requires_grad=True)
    phi, psi = phi_s.clone().requires_grad_(True), psi_s.clone().requires_grad_(True)
    for idx, seed in zip(batches, step_seeds):
        soft_target = similarity.matrix(idx).to(images.device)
        with seeded(seed, images.device):
            logits = student.logits(phi, psi, images[idx], texts[idx])
        loss = soft_contrastive_loss(logits, soft_target, options.loss, options.loss_eps)
        g_img, g_txt = torch.autograd.grad(loss, (phi, psi), create_graph=True)
        phi, psi = phi - eta_img * g_img, psi - eta_txt * g_txt
    dist_img = (phi_s - phi_star).pow(2).sum()
    dist_txt = (psi_s - psi_star).pow(2).sum()
    loss_img, loss_txt, _, _ = _ratios(phi - phi_star, psi - psi_star, dist_img, dist_txt,
                                       options.merge_branches)
    if options.lr_grad == "branch" and options.merge_branches:     # each lr from its own branch
        grad_lr_img, = torch.autograd.grad((phi - phi_star).pow(2).sum() / dist_img, eta_img, retain_graph=True)
        grad_lr_txt, = torch.autograd.grad((psi - psi_star).pow(2).sum() / dist_txt, eta_txt, retain_graph=True)
    (loss_img + loss_txt).backward()
    if not (options.lr_grad == "branch" and options.merge_branches):
        grad_lr_img, grad_lr_txt = eta_img.grad, eta_txt.grad
    loss_img, loss_txt = float(loss_img.detach()), float(loss_txt.detach())
    return MatchResult(loss_img + loss_txt, loss_img, loss_txt, float(grad_lr_img), float(grad_lr_txt),
                       _branch_sum(phi - phi_star, psi - psi_star, dist_img, dist_txt))


# `distill.matching: NAME`: fn(student, images, texts, similarity, lr_img, lr_txt, start, target,
# batches, options, step_seeds, **own) -> MatchResult, as `tesla_match`; one registered with an
# options dataclass gets its own settings (distill.matching_args.NAME) as **own. info:
# stop_gradient=True / False: its gradients are autograd's through the naive unroll with / without
# stop-gradient on the student (the registry-driven tests check that against the unroll)
Matcher = Callable[..., MatchResult]
MATCHERS: Registry[Matcher] = Registry("matching")
MATCHERS.add("tesla", tesla_match, stop_gradient=True)
MATCHERS.add("unroll", unroll_match, stop_gradient=False)


def _accumulate(leaf: torch.Tensor, idx: torch.Tensor, grad: torch.Tensor | None) -> None:
    """Add a mini-batch's gradient into the rows idx of leaf.grad (touching only those rows)."""
    if grad is None:
        return
    if leaf.grad is None:
        leaf.grad = torch.zeros_like(leaf)
    leaf.grad.index_add_(0, idx, grad)
