"""Unit tests for ray_rlhf.reward: rule loading, the scorer (rule and model kinds), transforms."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from toy_batches import PROMPTS, RESPONSES, token_batch

from ray_rlhf.config import RewardConfig
from ray_rlhf.data import toyworld
from ray_rlhf.models.builders import load_reward_model
from ray_rlhf.models.checkpoint import save_hf_model
from ray_rlhf.models.factory import write_tiny_model
from ray_rlhf.models.tokenizer import build_word_tokenizer
from ray_rlhf.reward import (
    RewardContext,
    Rewards,
    RewardScorer,
    absolute_rule_spec,
    is_batched,
    load_rule,
)
from ray_rlhf.types import RolloutBatch

TOY_RULE = "ray_rlhf.data.toyworld:true_reward"

# toy_batches: 2 prompts x 2 samples. Targets: sort 3 1 2 -> "1 2 3"; rev 1 2 -> "2 1".
TRUE = [1.0, 2 / 3, 1.0, 1 / 2]  # correct steps / max(target length, steps), by hand
# Tokens per row: BOS + prompt words, then response words + EOS.
PROMPT_LENS = [6, 6, 5, 5]
RESPONSE_LENS = [4, 5, 3, 2]
LAST = [9, 10, 7, 6]  # index of each row's last response token; T = 11


def hand_batch(responses: list[str] = RESPONSES) -> RolloutBatch:
    """The 2 x 2 batch with masks built from the lengths above (ids are placeholders)."""
    t = max(p + r for p, r in zip(PROMPT_LENS, RESPONSE_LENS, strict=True))
    attention = torch.zeros(4, t, dtype=torch.bool)
    response = torch.zeros(4, t, dtype=torch.bool)
    for row, (p, r) in enumerate(zip(PROMPT_LENS, RESPONSE_LENS, strict=True)):
        attention[row, : p + r] = True
        response[row, p : p + r] = True
    return RolloutBatch(
        prompt_ids=["p0", "p1"],
        prompts=PROMPTS,
        responses=responses,
        input_ids=torch.where(attention, 5, 0),
        attention_mask=attention,
        response_mask=response,
        sample_logprobs=torch.zeros(4, t),
        finished=torch.ones(4, dtype=torch.bool),
        n_samples=2,
    )


def write_rule(tmp_path: Path, body: str, name: str = "rules_under_test.py") -> Path:
    path = tmp_path / name
    path.write_text(body)
    return path


# --------------------------------------------------------------------------- load_rule


def test_load_rule_from_module():
    rule = load_rule(TOY_RULE)
    assert rule is toyworld.true_reward
    assert not is_batched(rule)


def test_load_rule_from_absolute_and_relative_file(tmp_path, monkeypatch):
    path = write_rule(
        tmp_path, "def n_words(prompt, response):\n    return len(response.split())\n"
    )
    assert load_rule(f"{path}:n_words")("x", "a b c") == 3
    monkeypatch.chdir(tmp_path)
    assert load_rule(f"{path.name}:n_words")("x", "a b") == 2
    assert absolute_rule_spec(f"{path.name}:n_words") == f"{path}:n_words"
    assert absolute_rule_spec(TOY_RULE) == TOY_RULE


def test_load_batched_rule(tmp_path):
    body = "def lengths(prompts, responses):\n    return [len(r) for r in responses]\n"
    path = write_rule(tmp_path, body + "lengths.batched = True\n")
    rule = load_rule(f"{path}:lengths")
    assert is_batched(rule)
    assert rule(["a", "b"], ["xy", "z"]) == [2, 1]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "expected 'package.module:function'"),
        (":true_reward", "expected 'package.module:function'"),
        ("ray_rlhf.data.toyworld:", "expected 'package.module:function'"),
        ("ray_rlhf.data.toyworld:not-a-name", "expected 'package.module:function'"),
        ("ray_rlhf.no_such_module:f", "module 'ray_rlhf.no_such_module' not found"),
        ("no_such_top_level_pkg.sub:f", "not found"),
        ("does/not/exist.py:f", "not found"),
        ("ray_rlhf.data.toyworld:no_such_rule", "has no attribute 'no_such_rule'"),
        ("ray_rlhf.data.toyworld:STYLE_TOKEN", "not callable"),
    ],
)
def test_load_rule_errors_name_the_spec(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        load_rule(spec)
    assert repr(spec) in str(info.value)


def test_import_error_inside_a_rule_module_is_not_hidden(tmp_path, monkeypatch):
    write_rule(tmp_path, "import no_such_dependency_xyz\n", name="rule_with_bad_import.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        load_rule("rule_with_bad_import:f")


# --------------------------------------------------------------------------- rule scorer


def test_rule_scores_match_true_reward_and_sit_on_last_token():
    batch = hand_batch()
    scored = RewardScorer(RewardConfig(rule=TOY_RULE)).score(batch)
    expected = torch.tensor(TRUE)
    assert scored.rollout is batch
    assert scored.scores.dtype == torch.float32
    assert torch.allclose(scored.scores, expected)
    assert [toyworld.true_reward(batch.prompt_of_row(i), RESPONSES[i]) for i in range(4)] == TRUE
    placed = torch.zeros(4, 11)
    placed[torch.arange(4), torch.tensor(LAST)] = expected
    assert torch.allclose(scored.token_rewards, placed)
    assert torch.allclose(scored.diagnostics["reward/raw"], expected)
    assert torch.equal(scored.diagnostics["reward/clipped"], torch.zeros(4))


def test_clip_is_applied_and_flagged():
    scored = RewardScorer(RewardConfig(rule=TOY_RULE, clip=0.6)).score(hand_batch())
    assert torch.allclose(scored.scores, torch.tensor([0.6, 0.6, 0.6, 0.5]))
    assert torch.allclose(scored.diagnostics["reward/raw"], torch.tensor(TRUE))
    assert torch.equal(scored.diagnostics["reward/clipped"], torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert torch.allclose(scored.token_rewards.sum(dim=1), scored.scores)


def test_non_finite_rule_output_names_row_prompt_and_response(tmp_path):
    body = "def r(prompt, response):\n    return float('nan') if '!' in response else 1.0\n"
    scorer = RewardScorer(RewardConfig(rule=f"{write_rule(tmp_path, body)}:r"))
    with pytest.raises(ValueError, match=r"row 1 \(prompt id 'p0', response '1 3 3 !'\)"):
        scorer.score(hand_batch())
    with pytest.raises(ValueError, match="row 11 "):
        scorer.compute(hand_batch(), row_offset=10)


def test_infinite_rule_output_is_an_error(tmp_path):
    body = "def r(prompt, response):\n    return -float('inf') if response == '2' else 0.0\n"
    scorer = RewardScorer(RewardConfig(rule=f"{write_rule(tmp_path, body)}:r"))
    with pytest.raises(ValueError, match=r"row 3 \(prompt id 'p1', response '2'\).*not finite"):
        scorer.score(hand_batch())


def test_rule_exception_and_non_number_name_the_row(tmp_path):
    body = (
        "def boom(prompt, response):\n"
        "    if response == '2 1':\n"
        "        raise KeyError('oops')\n"
        "    return 0.0\n"
        "def text(prompt, response):\n"
        "    return 'good'\n"
    )
    path = write_rule(tmp_path, body)
    with pytest.raises(ValueError, match=r"row 2 \(prompt id 'p1', response '2 1'\).*KeyError"):
        RewardScorer(RewardConfig(rule=f"{path}:boom")).score(hand_batch())
    with pytest.raises(ValueError, match=r"row 0 .*returned 'good', not a number"):
        RewardScorer(RewardConfig(rule=f"{path}:text")).score(hand_batch())


def test_batched_rule_is_called_once_per_batch(tmp_path):
    body = (
        "CALLS = []\n"
        "def many(prompts, responses):\n"
        "    CALLS.append(len(responses))\n"
        "    return [float(len(p.split())) for p in prompts]\n"
        "many.batched = True\n"
        "def short(prompts, responses):\n"
        "    return [0.0]\n"
        "short.batched = True\n"
    )
    path = write_rule(tmp_path, body)
    scorer = RewardScorer(RewardConfig(rule=f"{path}:many"))
    scored = scorer.score(hand_batch())
    assert torch.equal(scored.scores, torch.tensor([5.0, 5.0, 4.0, 4.0]))
    assert scorer.source.rule.__globals__["CALLS"] == [4]
    with pytest.raises(ValueError, match="returned 1 rewards for 4 responses"):
        RewardScorer(RewardConfig(rule=f"{path}:short")).score(hand_batch())


# Rules get the prompt as the user wrote it; a rule that takes `rendered_prompt` (or
# **kwargs) also gets the text the model read.
RENDERED = ["<|user|> " + p + " <|assistant|>" for p in PROMPTS]
SIGNATURE_RULES = """
def plain(prompt, response):
    return float(prompt.startswith("<|user|>"))

def keyword(prompt, response, rendered_prompt=None):
    return float(rendered_prompt.startswith("<|user|>") and not prompt.startswith("<|"))

def keyword_only(prompt, response, *, rendered_prompt):
    return float(rendered_prompt.endswith("<|assistant|>"))

def var_kw(prompt, response, **extra):
    return float(extra["rendered_prompt"] != prompt)

def other_keyword(prompt, response, rendered=None):
    return float(rendered is None)

def batch(prompts, responses, rendered_prompts):
    return [float(r.startswith("<|user|> " + p)) for p, r in zip(prompts, rendered_prompts)]
batch.batched = True
"""


@pytest.mark.parametrize(
    ("name", "keyword"),
    [
        ("plain", None),
        ("keyword", "rendered_prompt"),
        ("keyword_only", "rendered_prompt"),
        ("var_kw", "rendered_prompt"),
        ("other_keyword", None),
        ("batch", "rendered_prompts"),
    ],
)
def test_rules_get_the_user_prompt_and_the_rendered_one_if_they_ask(tmp_path, name, keyword):
    path = write_rule(tmp_path, SIGNATURE_RULES)
    scorer = RewardScorer(RewardConfig(rule=f"{path}:{name}"))
    assert scorer.source.rendered_keyword == keyword
    batch = dataclasses.replace(hand_batch(), prompts=RENDERED, user_prompts=list(PROMPTS))
    expected = 0.0 if name == "plain" else 1.0  # plain sees the user's text, not the template
    assert scorer.score(batch).scores.tolist() == [expected] * 4


def test_without_user_prompts_rules_get_the_prompts_the_model_read(tmp_path):
    path = write_rule(tmp_path, SIGNATURE_RULES)
    batch = dataclasses.replace(hand_batch(), prompts=RENDERED)
    scores = RewardScorer(RewardConfig(rule=f"{path}:plain")).score(batch).scores
    assert scores.tolist() == [1.0] * 4
    scores = RewardScorer(RewardConfig(rule=f"{path}:var_kw")).score(batch).scores
    assert scores.tolist() == [0.0] * 4  # rendered == prompt


def test_the_signature_is_inspected_once(tmp_path, monkeypatch):
    import inspect

    path = write_rule(tmp_path, SIGNATURE_RULES)
    scorer = RewardScorer(RewardConfig(rule=f"{path}:keyword"))
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: pytest.fail("inspected again"))
    batch = dataclasses.replace(hand_batch(), prompts=RENDERED, user_prompts=list(PROMPTS))
    scorer.score(batch)
    scorer.score(batch)


def test_bad_rule_fails_at_construction():
    with pytest.raises(ValueError, match="no attribute"):
        RewardScorer(RewardConfig(rule="ray_rlhf.data.toyworld:nope"))


# --------------------------------------------------------------------------- transforms


@dataclasses.dataclass
class SubtractBaseline:
    """A contrastive-style test transform: score minus a per-prompt-id constant."""

    baselines: dict[str, float]
    name: str = "baseline"

    def apply(self, ctx: RewardContext, rewards: Rewards) -> Rewards:
        rows = range(ctx.batch.num_samples)
        ids = [ctx.batch.prompt_ids[i // ctx.batch.n_samples] for i in rows]
        base = torch.tensor([self.baselines[prompt_id] for prompt_id in ids])
        diagnostics = rewards.diagnostics | {"reward/baseline": base}
        return Rewards(rewards.scores - base, rewards.token_rewards, diagnostics)


@dataclasses.dataclass
class SpreadOverResponse:
    """A segment-style test transform: each response token gets `per_token`."""

    per_token: float
    name: str = "spread"

    def apply(self, ctx: RewardContext, rewards: Rewards) -> Rewards:
        tokens = ctx.batch.response_mask.float() * self.per_token  # (N, T)
        return Rewards(tokens.sum(dim=1), tokens, rewards.diagnostics)


def test_transforms_run_in_order_before_clip():
    transform = SubtractBaseline({"p0": 0.5, "p1": -20.0})
    scorer = RewardScorer(RewardConfig(rule=TOY_RULE, clip=10.0), transforms=[transform])
    scored = scorer.score(hand_batch())
    assert torch.allclose(scored.scores, torch.tensor([0.5, 2 / 3 - 0.5, 10.0, 10.0]))
    assert torch.equal(scored.diagnostics["reward/clipped"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(scored.diagnostics["reward/raw"], torch.tensor(TRUE))
    assert torch.equal(scored.diagnostics["reward/baseline"], torch.tensor([0.5, 0.5, -20, -20]))
    assert scorer.describe()["transforms"] == ["baseline"]


def test_transform_token_rewards_are_kept_and_clamped():
    scorer = RewardScorer(RewardConfig(rule=TOY_RULE, clip=2.0), transforms=[SpreadOverResponse(3)])
    scored = scorer.score(hand_batch())
    batch = hand_batch()
    assert torch.equal(scored.token_rewards, batch.response_mask.float() * 2.0)
    assert torch.equal(scored.scores, torch.full((4,), 2.0))
    assert torch.equal(scored.diagnostics["reward/clipped"], torch.ones(4))


def test_non_finite_transform_output_names_the_transform():
    transform = SubtractBaseline({"p0": 0.0, "p1": math.nan})
    scorer = RewardScorer(RewardConfig(rule=TOY_RULE), transforms=[transform])
    with pytest.raises(ValueError, match=r"transform 'baseline' of row 2 \(prompt id 'p1'"):
        scorer.score(hand_batch())


# --------------------------------------------------------------------------- model scorer


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(toyworld.vocabulary())


def _write_reward_model(root: Path, tokenizer, name: str) -> tuple[Path, Path, torch.nn.Module]:
    """A tiny policy dir and a scalar RM saved from it; returns both dirs and the RM."""
    policy = write_tiny_model(root / f"{name}_policy", tokenizer)
    rm = load_reward_model(policy, head="scalar", seed=3).eval()
    with torch.no_grad():  # a visible head, so scores differ across rows
        rm.score.weight.mul_(20.0)
        rm.score.bias.fill_(0.25)
    return policy, save_hf_model(rm, tokenizer, root / f"{name}_rm"), rm


@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory, tokenizer):
    return _write_reward_model(tmp_path_factory.mktemp("reward"), tokenizer, "toy")


def forward_at_last_token(model, batch: RolloutBatch) -> torch.Tensor:
    """(N,) the model's value at each row's last real token, by a plain forward."""
    with torch.no_grad():
        values = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask.long())
    last = batch.attention_mask.long().sum(dim=1) - 1
    return values.logits[torch.arange(len(last)), last, 0]


def test_model_scores_equal_a_direct_forward(reward_dirs, tokenizer):
    policy_dir, rm_dir, rm = reward_dirs
    batch = token_batch(tokenizer, finished=[True, True, False, True])
    scorer = RewardScorer(RewardConfig(kind="model", model_path=str(rm_dir)), threads=1)
    scored = scorer.score(batch)
    expected = forward_at_last_token(rm, batch)
    assert torch.allclose(scored.scores, expected, atol=1e-5)
    assert expected.std() > 1e-3  # the rows really differ
    assert torch.allclose(scored.token_rewards.sum(dim=1), scored.scores)
    last = torch.where(batch.response_mask, torch.arange(batch.input_ids.shape[1]), -1).amax(1)
    assert torch.allclose(scored.token_rewards[torch.arange(4), last], scored.scores)
    with_policy = RewardScorer(
        RewardConfig(kind="model", model_path=str(rm_dir)), policy_dir=str(policy_dir)
    )
    assert not with_policy.describe()["retokenize"]


def test_model_with_another_tokenizer_retokenizes_text(tmp_path, reward_dirs, tokenizer):
    policy_dir = reward_dirs[0]
    other = build_word_tokenizer(tuple(reversed(toyworld.vocabulary())))
    _, rm_dir, rm = _write_reward_model(tmp_path, other, "other")
    finished = [True, False, True, True]
    cfg = RewardConfig(kind="model", model_path=str(rm_dir))
    scorer = RewardScorer(cfg, policy_dir=str(policy_dir))
    assert scorer.describe()["retokenize"]
    scored = scorer.score(token_batch(tokenizer, finished))
    expected = forward_at_last_token(rm, token_batch(other, finished))
    assert torch.allclose(scored.scores, expected, atol=1e-5)


def test_model_rejects_ids_outside_its_vocabulary(reward_dirs, tokenizer):
    batch = token_batch(tokenizer, finished=[True] * 4)
    ids = batch.input_ids.clone()
    ids[0, 1] = 999
    batch = dataclasses.replace(batch, input_ids=ids)
    scorer = RewardScorer(RewardConfig(kind="model", model_path=str(reward_dirs[1])))
    with pytest.raises(ValueError, match="token id 999 is outside its vocabulary"):
        scorer.score(batch)


def test_model_clip_applies_to_model_scores(reward_dirs, tokenizer):
    batch = token_batch(tokenizer, finished=[True] * 4)
    cfg = RewardConfig(kind="model", model_path=str(reward_dirs[1]), clip=1e-3)
    scored = RewardScorer(cfg).score(batch)
    raw = scored.diagnostics["reward/raw"]
    assert torch.allclose(scored.scores, raw.clamp(-1e-3, 1e-3))
    assert torch.equal(scored.diagnostics["reward/clipped"], (raw.abs() > 1e-3).float())
