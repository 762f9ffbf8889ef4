"""The prompt-free / prompt-related diagnostics of the reward actors (docs/algorithms.md §1)."""

from __future__ import annotations

import math

import pytest
import torch

from ray_rlhf.config import RewardConfig
from ray_rlhf.reward import RewardScorer
from ray_rlhf.reward.decomposition import KEYS, PromptFreeDiagnostics
from ray_rlhf.types import RolloutBatch

PROMPTS = ["sort 3 1 2 =", "rev 1 2 =", "copy 4 4 ="]
RESPONSES = ["1 2 3", "1 3 3 !", "2 1", "2", "4 4 !", "4"]  # 3 prompts x 2 samples


def batch(prompts=PROMPTS, responses=RESPONSES, n=2) -> RolloutBatch:
    rows = len(responses)
    return RolloutBatch(
        prompt_ids=[f"p{i}" for i in range(len(prompts))],
        prompts=prompts,
        responses=responses,
        input_ids=torch.zeros(rows, 4, dtype=torch.long),
        attention_mask=torch.ones(rows, 4, dtype=torch.bool),
        response_mask=torch.ones(rows, 4, dtype=torch.bool),
        sample_logprobs=torch.zeros(rows, 4),
        finished=torch.ones(rows, dtype=torch.bool),
        n_samples=n,
    )


def scorer(tmp_path, body: str, m: int = 2) -> RewardScorer:
    path = tmp_path / "rules_decomposition.py"
    path.write_text(body)
    return RewardScorer(
        RewardConfig(rule=f"{path}:r"), transforms=[PromptFreeDiagnostics(num_prompts=m)]
    )


def test_a_reward_that_ignores_the_prompt_is_all_prompt_free(tmp_path):
    out = scorer(tmp_path, "def r(prompt, response):\n    return 0.3 * len(response)\n").score(
        batch()
    )
    d = out.diagnostics
    raw = d["reward/raw"]
    partner = torch.tensor([1, 0, 3, 2, 5, 4])
    gap = raw - raw[partner]
    # One pair's gap is the same under every prompt, so dr2 = logit(sigmoid(gap)) = gap.
    torch.testing.assert_close(d["reward/prompt_free_gap"], gap, atol=1e-4, rtol=0)
    torch.testing.assert_close(d["reward/prompt_related_gap"], torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(d["reward/prompt_free_score"], raw, atol=1e-6, rtol=0)
    assert d["reward/prompt_free_share"][gap.abs() > 0].min() > 0.999
    torch.testing.assert_close(out.scores, raw)  # a diagnostic: rewards unchanged


def test_a_reward_that_ignores_the_response_has_no_gap(tmp_path):
    body = "def r(prompt, response):\n    return float(len(prompt))\n"
    d = scorer(tmp_path, body).score(batch()).diagnostics
    for key in ("reward/prompt_free_gap", "reward/prompt_related_gap"):
        torch.testing.assert_close(d[key], torch.zeros(6), atol=1e-6, rtol=0)


def test_the_toy_truth_is_mostly_prompt_related(tmp_path):
    body = "from ray_rlhf.data.toyworld import true_reward as r\n"
    d = scorer(tmp_path, body, m=2).score(batch()).diagnostics
    # Rows 0/1: own-prompt gap 1 - 2/3; under rev/copy prompts both responses score ~0.
    assert d["reward/prompt_related_gap"][0] == pytest.approx(1 / 3, abs=0.1)
    assert all(math.isfinite(v) for v in d["reward/prompt_free_share"].tolist())


def test_single_prompt_or_single_sample_shards_get_zeros_and_invalid(tmp_path):
    body = "def r(prompt, response):\n    return float(len(response))\n"
    s = scorer(tmp_path, body)
    one_prompt = s.score(batch(PROMPTS[:1], RESPONSES[:2])).diagnostics
    one_sample = s.score(batch(PROMPTS, RESPONSES[:3], n=1)).diagnostics
    for d, rows in ((one_prompt, 2), (one_sample, 3)):
        assert set(KEYS) <= set(d)
        assert all(torch.equal(d[k], torch.zeros(rows)) for k in KEYS)
