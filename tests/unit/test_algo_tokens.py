import torch

from ray_rlhf.algo.tokens import token_logprobs, token_values


def test_token_logprobs_by_hand():
    # Vocabulary of 2; logits at position 0 are [0, ln 3] -> p(token 1) = 3/4.
    logits = torch.tensor([[[0.0, 3.0], [0.0, 0.0], [5.0, 5.0]]]).log_softmax(-1)
    logits[0, 0] = torch.tensor([0.0, torch.log(torch.tensor(3.0))])
    ids = torch.tensor([[0, 1, 0]])
    out = token_logprobs(logits, ids)
    assert out.shape == (1, 3)
    assert out[0, 0] == 0
    assert torch.isclose(out[0, 1], torch.log(torch.tensor(0.75)))
    assert torch.isclose(out[0, 2], torch.log(torch.tensor(0.5)))


def test_token_values_shift():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert torch.equal(token_values(values), torch.tensor([[0.0, 1.0, 2.0], [0.0, 4.0, 5.0]]))
