"""faiss nearest-neighbour search against the exact torch path and a brute-force sort."""
import pytest
import torch

from vldistill.algorithms.neighbours import knn


def _data(seed, q=40, n=700, d=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(q, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
@pytest.mark.parametrize("seed", range(3))
def test_faiss_equals_torch_and_brute_force(metric, seed):
    queries, bank = _data(seed)
    exclude = list(range(0, 700, 7))
    fast = knn(queries, bank, 5, metric, exclude=exclude, backend="faiss")
    exact = knn(queries, bank, 5, metric, exclude=exclude, backend="torch")
    assert torch.equal(fast.indices, exact.indices)
    torch.testing.assert_close(fast.scores, exact.scores, rtol=1e-4, atol=1e-4)
    # brute force in float64
    q, b = queries.double(), bank.double()
    if metric == "cosine":
        scores = torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(b, dim=1).t()
    else:
        scores = -torch.cdist(q, b) ** 2
    scores[:, exclude] = float("-inf")
    top = scores.topk(5, dim=1)
    assert torch.equal(fast.indices, top.indices)
    assert not set(fast.indices.flatten().tolist()) & set(exclude)
    expected = top.values if metric == "cosine" else -top.values
    torch.testing.assert_close(fast.scores.double(), expected, rtol=1e-4, atol=1e-4)


def test_torch_path_blocks_agree_with_one_block():
    from vldistill.algorithms.neighbours import _torch_index
    queries, bank = _data(5)
    for kind in ("cos", "l2"):
        whole = _torch_index(bank, kind)(queries, 3, None)
        blocked = _torch_index(bank, kind, max_entries=700 * 3)(queries, 3, None)   # 3 queries a block
        assert torch.equal(whole[1], blocked[1])


def test_one_index_answers_many_searches_like_fresh_ones():
    from vldistill.algorithms.neighbours import NeighbourIndex
    queries, bank = _data(6)
    index = NeighbourIndex(bank, "l2")
    for exclude in ([], [1, 2, 3], list(range(0, 700, 2))):
        assert torch.equal(index.search(queries, 4, exclude).indices,
                           knn(queries, bank, 4, "l2", exclude=exclude, backend="torch").indices)


def test_bad_requests_are_refused():
    queries, bank = _data(0, n=10)
    with pytest.raises(ValueError, match="searchable rows"):
        knn(queries, bank, 8, exclude=[0, 1, 2])
    with pytest.raises(ValueError, match="unknown metric"):
        knn(queries, bank, 1, metric="dot")
    with pytest.raises(ValueError, match="unknown search backend"):
        knn(queries, bank, 1, backend="annoy")
    with pytest.raises(ValueError, match="must be"):
        knn(queries[:, :3], bank, 1)


def test_a_small_faiss_search_leaves_torch_threads_alone():
    """faiss shares torch's OpenMP runtime: its one-thread setting for small searches must not
    stay behind (it once left every later training step of the process on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        queries, bank = _data(0, q=1, n=50, d=8)       # small: faiss searches it with one thread
        knn(queries, bank, 1, "l2", backend="faiss")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
