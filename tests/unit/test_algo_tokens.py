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


def _random_case(dtype=torch.float32):
    """3 right-padded rows (B=3, T=6, V=11): responses of 2, 3 and 0 tokens, and the full
    logits with NaN at every position that scores no response token (must be unread)."""
    from ray_rlhf.algo.tokens import logit_positions

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (3, 6), generator=gen)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 2:4] = True
    mask[1, 3:6] = True
    logits = torch.randn(3, 6, 11, generator=gen).to(dtype)
    positions = logit_positions(mask)
    full = logits.masked_fill(~positions.unsqueeze(-1), float("nan"))
    return full, ids, mask, positions


def test_logit_positions_are_one_before_each_response_token():
    from ray_rlhf.algo.tokens import logit_positions

    mask = torch.tensor([[False, False, True, True], [True, True, False, False]])
    expected = [[False, True, True, False], [True, False, False, False]]
    assert logit_positions(mask).tolist() == expected  # column 0 of a mask scores nothing


def test_response_token_logprobs_match_a_slow_loop_and_the_full_logits():
    from ray_rlhf.algo.tokens import response_token_logprobs

    full, ids, mask, positions = _random_case()
    for chunk_rows in (1, 2, 256):
        got = response_token_logprobs(full[positions], ids, mask, chunk_rows=chunk_rows)
        assert got.shape == (3, 6) and got.dtype == torch.float32
        slow = torch.zeros(3, 6)
        for b in range(3):
            for t in range(1, 6):
                if mask[b, t]:
                    slow[b, t] = torch.log_softmax(full[b, t - 1].double(), -1)[ids[b, t]]
        torch.testing.assert_close(got, slow, rtol=0, atol=1e-6)
        # The code this replaced, on clean logits (no NaN), masked.
        clean = torch.nan_to_num(full)
        torch.testing.assert_close(got, token_logprobs(clean, ids) * mask, rtol=0, atol=1e-6)


def test_response_token_logprobs_gradient_equals_the_full_computation():
    from ray_rlhf.algo.tokens import response_token_logprobs

    full, ids, mask, positions = _random_case()
    clean = torch.nan_to_num(full).requires_grad_(True)
    weights = torch.randn(3, 6)
    (token_logprobs(clean, ids) * mask * weights).sum().backward()
    selected = clean.detach()[positions].requires_grad_(True)
    (response_token_logprobs(selected, ids, mask, chunk_rows=2) * weights).sum().backward()
    torch.testing.assert_close(selected.grad, clean.grad[positions], rtol=0, atol=1e-6)


def test_response_token_logprobs_upcast_bfloat16_logits():
    from ray_rlhf.algo.tokens import response_token_logprobs

    full, ids, mask, positions = _random_case(torch.bfloat16)
    got = response_token_logprobs(full[positions], ids, mask, chunk_rows=2)
    assert got.dtype == torch.float32
    expected = token_logprobs(torch.nan_to_num(full), ids) * mask  # also upcasts first
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_response_token_entropy_matches_masked_entropy_of_the_full_logits():
    from ray_rlhf.algo import masked_entropy_from_logits
    from ray_rlhf.algo.tokens import response_token_entropy

    full, _, mask, positions = _random_case()
    got = response_token_entropy(full[positions], mask, chunk_rows=2)
    old = masked_entropy_from_logits(torch.nan_to_num(full)[:, :-1], mask[:, 1:])
    torch.testing.assert_close(got[:, 1:], old, rtol=0, atol=1e-6)
    assert (got[:, 0] == 0).all()
    # Hand case: uniform over 11 tokens has entropy ln 11.
    uniform = torch.zeros(int(mask[:, 1:].sum()), 11)
    torch.testing.assert_close(
        response_token_entropy(uniform, mask), torch.log(torch.tensor(11.0)) * mask
    )


def test_response_functions_accept_no_response_tokens():
    from ray_rlhf.algo.tokens import response_token_entropy, response_token_logprobs

    mask = torch.zeros(2, 4, dtype=torch.bool)
    ids = torch.zeros(2, 4, dtype=torch.long)
    empty = torch.zeros(0, 7)
    assert response_token_logprobs(empty, ids, mask).abs().sum() == 0
    assert response_token_entropy(empty, mask).shape == (2, 4)
