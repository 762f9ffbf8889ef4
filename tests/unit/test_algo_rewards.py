import torch

from ray_rlhf.algo.rewards import place_last_token_rewards


def test_last_token_placement_by_hand():
    mask = torch.tensor(
        [[False, True, True, False], [False, False, False, False], [True, True, True, True]]
    )
    out = place_last_token_rewards(torch.tensor([2.0, 5.0, -1.0]), mask)
    expected = torch.tensor([[0, 0, 2.0, 0], [0, 0, 0, 0], [0, 0, 0, -1.0]])
    assert torch.equal(out, expected)
    assert out.dtype == torch.float32
