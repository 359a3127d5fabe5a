"""Similarity parameterizations: batch blocks equal the full matrix's blocks; gradients stay in the batch."""
import pytest
import torch

from vldistill.algorithms.similarity import SIMILARITIES, build_similarity


@pytest.mark.parametrize("kind", SIMILARITIES.names())
def test_batch_matrix_is_block_of_full_matrix(kind):
    torch.manual_seed(0)
    sim = build_similarity(kind, 12, rank=3, alpha=2.0)
    with torch.no_grad():
        for p in sim.parameters():
            p.add_(torch.randn_like(p))
    idx = torch.tensor([7, 2, 11, 5])
    torch.testing.assert_close(sim.matrix(idx), sim.matrix()[idx[:, None], idx])


def test_lowrank_formula_and_initialization():
    sim = build_similarity("lowrank", 6, rank=2, alpha=3.0)
    torch.testing.assert_close(sim.matrix(), torch.eye(6))          # R = 0 at init
    with torch.no_grad():
        sim.right.normal_()
    expected = torch.diag(sim.diag) + 1.5 * sim.left @ sim.right.t()
    torch.testing.assert_close(sim.matrix(), expected)
    assert sum(p.numel() for p in sim.parameters()) == 6 + 2 * 6 * 2   # O(N r), not N^2


@pytest.mark.parametrize("kind", ["lowrank", "full"])
def test_gradients_reach_only_batch_rows(kind):
    torch.manual_seed(0)
    sim = build_similarity(kind, 10, rank=3, alpha=1.0)
    with torch.no_grad():
        for p in sim.parameters():
            p.add_(torch.randn_like(p))
    idx = torch.tensor([1, 4, 8])
    (sim.matrix(idx) * torch.randn(3, 3)).sum().backward()
    outside = torch.ones(10, dtype=torch.bool)
    outside[idx] = False
    for p in sim.parameters():
        assert p.grad[outside].abs().max() == 0
        assert p.grad[idx].abs().max() > 0


@pytest.mark.parametrize("kind", ["lowrank", "full"])
def test_add_grad_matches_autograd_through_indexing(kind):
    torch.manual_seed(1)
    sim = build_similarity(kind, 9, rank=2, alpha=1.0)
    with torch.no_grad():
        for p in sim.parameters():
            p.add_(torch.randn_like(p))
    idx = torch.tensor([3, 0, 6, 7])
    weights = torch.randn(4, 4)
    (sim.matrix(idx) * weights).sum().backward()
    expected = [p.grad.clone() for p in sim.parameters()]
    for p in sim.parameters():
        p.grad = None
    leaves = [p.detach().requires_grad_() for p in sim.params(idx)]
    grads = torch.autograd.grad((sim.matrix_from(leaves, 4) * weights).sum(), leaves)
    sim.add_grad(idx, list(grads))
    for p, e in zip(sim.parameters(), expected):
        torch.testing.assert_close(p.grad, e)


def test_identity_has_no_parameters():
    sim = build_similarity("identity", 5)
    assert list(sim.parameters()) == []
    torch.testing.assert_close(sim.matrix(torch.tensor([0, 3])), torch.eye(2))
