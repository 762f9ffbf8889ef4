"""PPO losses against hand-computed tensors, including cases where clipping engages."""

import math

import torch
from torch.testing import assert_close

from ray_rlhf.algo import entropy_bonus, kl_loss, policy_loss, value_loss

T, F = True, False
LN2 = math.log(2.0)


def f64(data: float | list) -> torch.Tensor:
    return torch.tensor(data, dtype=torch.float64)


# Four tokens, the last one padding (junk values that must be ignored).
# ratios pi / pi_old = [1, 1.5, 0.5, junk], advantages = [1, 1, -1, junk]
OLD = f64([[-1.0, -1.0, -1.0, -1.0]])
LOG_RATIOS = [0.0, math.log(1.5), math.log(0.5), 30.0]
ADV = f64([[1.0, 1.0, -1.0, 100.0]])
MASK = torch.tensor([[T, T, T, F]])


def new_logprobs() -> torch.Tensor:
    return (OLD + f64([LOG_RATIOS])).requires_grad_(True)


def test_policy_loss_clipping_engages() -> None:
    logprobs = new_logprobs()
    loss, stats = policy_loss(logprobs, OLD, ADV, MASK, clip_eps=0.2)
    # token 0: r=1,   A=1:  min(1, 1) = 1                       -> loss -1
    # token 1: r=1.5, A=1:  min(1.5, clip 1.2) = 1.2   (clipped) -> loss -1.2
    # token 2: r=0.5, A=-1: min(-0.5, clip 0.8 * -1) = -0.8 (clipped) -> loss 0.8
    # token-mean: (-1 - 1.2 + 0.8) / 3
    assert_close(loss, f64(-1.4 / 3))
    assert_close(stats.clip_fraction, f64(2 / 3))
    assert_close(stats.ratio_mean, f64(1.0))  # (1 + 1.5 + 0.5) / 3
    # k3 with the old policy sampling: r - 1 - ln r = [0, 0.5 - ln 1.5, -0.5 + ln 2]
    assert_close(stats.approx_kl, f64(math.log(4 / 3) / 3))
    # Clipped tokens and padding get no gradient; token 0: d(-r A / 3)/d log p = -1/3.
    loss.backward()
    assert_close(logprobs.grad, f64([[-1 / 3, 0.0, 0.0, 0.0]]))


def test_policy_loss_asymmetric_upper_clip() -> None:
    loss, stats = policy_loss(new_logprobs(), OLD, ADV, MASK, clip_eps=0.2, clip_eps_high=0.6)
    # token 1: r=1.5 is inside [0.8, 1.6] now -> loss -1.5;  tokens 0, 2 as before
    assert_close(loss, f64((-1.0 - 1.5 + 0.8) / 3))
    assert_close(stats.clip_fraction, f64(1 / 3))


def test_policy_loss_ratio_below_range_with_positive_advantage_is_not_clipped() -> None:
    # r=0.5 < 0.8 but A=1 > 0: min(0.5, 0.8) = 0.5, the unclipped term keeps its gradient
    logprobs = (OLD[:, :1] + math.log(0.5)).requires_grad_(True)
    loss, stats = policy_loss(logprobs, OLD[:, :1], f64([[1.0]]), MASK[:, :1], clip_eps=0.2)
    assert_close(loss, f64(-0.5))
    assert_close(stats.clip_fraction, f64(0.0))
    loss.backward()
    assert_close(logprobs.grad, f64([[-0.5]]))  # d(-r A)/d log p = -r A


def test_policy_loss_num_tokens_divides_the_masked_sum() -> None:
    loss, _ = policy_loss(new_logprobs(), OLD, ADV, MASK, clip_eps=0.2, num_tokens=6)
    assert_close(loss, f64(-1.4 / 6))  # masked sum -1.4 over a 6-token mini-batch


def test_value_loss_clipped_and_unclipped() -> None:
    values = f64([[1.0, 2.0, 50.0]]).requires_grad_(True)
    old_values = f64([[0.0, 2.0, 0.0]])
    returns = f64([[2.0, 3.0, 0.0]])
    mask = torch.tensor([[T, T, F]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_eps=0.2)
    # token 0: unclipped (1 - 2)^2 = 1; clipped V = 0 + clip(1, +-0.2) = 0.2 -> (0.2 - 2)^2
    #          = 3.24; max 3.24 (clipped is larger)
    # token 1: V = V_old, both (2 - 3)^2 = 1
    # 0.5 * (3.24 + 1) / 2 = 1.06
    assert_close(loss, f64(1.06))
    assert_close(stats.clip_fraction, f64(0.5))
    loss.backward()
    # token 0 sits on the clipped branch (constant in V) -> 0; token 1: 0.5 * 2 (V - R) / 2
    assert_close(values.grad, f64([[0.0, -0.5, 0.0]]))

    loss, stats = value_loss(values, old_values, returns, mask, clip_eps=None)
    assert_close(loss, f64(0.5))  # 0.5 * (1 + 1) / 2
    assert_close(stats.clip_fraction, f64(0.0))


def test_entropy_bonus_is_token_mean_over_the_mask() -> None:
    uniform4 = [0.0, 0.0, 0.0, 0.0]  # H = ln 4
    peaked = [0.0, -100.0, -100.0, -100.0]  # H ~ 0, but masked out anyway
    logits = f64([[uniform4, peaked], [uniform4, uniform4]])
    mask = torch.tensor([[T, F], [T, T]])
    assert_close(entropy_bonus(logits, mask), f64(math.log(4)))


def test_kl_loss_hand_case() -> None:
    logprobs = f64([[math.log(0.5), math.log(0.5), 0.0]])
    ref = f64([[math.log(0.25), math.log(0.5), -9.0]])
    mask = torch.tensor([[T, T, F]])
    # log ratios [ln 2, 0]; k1 mean = ln 2 / 2; k3 = [0.5 + ln 2 - 1, 0] -> mean (ln 2 - 0.5) / 2
    assert_close(kl_loss(logprobs, ref, mask, "k1"), f64(LN2 / 2))
    assert_close(kl_loss(logprobs, ref, mask, "k3"), f64((LN2 - 0.5) / 2))
