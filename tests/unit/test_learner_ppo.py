"""PPOLearner helpers that need no engine: global whitening and row selection."""

import torch

from ray_rlhf.algo import masked_whiten
from ray_rlhf.learner.ppo_batch import Experience, global_whiten
from ray_rlhf.types import group_range


def test_global_whiten_equals_masked_whiten_on_one_rank():
    torch.manual_seed(0)
    x = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.rand(4, 6) > 0.3
    assert torch.allclose(global_whiten(x, mask), masked_whiten(x, mask), atol=1e-6)


def test_experience_rows_trims_to_longest():
    attn = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    t = torch.arange(12.0).view(3, 4)
    exp = Experience(t.long(), attn, attn, t, t, t, None, None, t)
    sub = exp.rows(torch.tensor([1, 0]))
    assert sub.input_ids.tolist() == [[4, 5, 6], [0, 1, 2]]
    assert sub.returns is None


def test_group_range_covers_everything_once():
    for groups in range(0, 9):
        for world in (1, 2, 3):
            spans = [group_range(groups, r, world) for r in range(world)]
            covered = [g for a, b in spans for g in range(a, b)]
            assert covered == list(range(groups))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1


def test_global_whiten_keeps_the_variance_at_large_means():
    """Rewards near 3000 with spread 0.5: E[x^2] - mean^2 in float32 loses the variance
    (the float32 sum of squares carries ~1e-7 relative error on ~9e6); two passes in float64
    give the float64 answer."""
    gen = torch.Generator().manual_seed(0)
    x64 = 3000.0 + 0.5 * torch.randn(64, 16, generator=gen, dtype=torch.float64)
    mask = torch.rand(64, 16, generator=gen) > 0.2
    expected = masked_whiten(x64, mask)
    got = global_whiten(x64.float(), mask)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), expected, atol=1e-3)
    # The one-pass float32 formula this replaced is off by far more.
    x, m = x64.float(), mask.float()
    n, s, ss = m.sum(), (x * m).sum(), (x * x * m).sum()
    one_pass_var = (ss / n - (s / n) ** 2) * n / (n - 1)
    true_var = x64[mask].var()
    assert abs(float(one_pass_var) - float(true_var)) > 0.05
