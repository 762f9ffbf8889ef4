"""PPOLearner in-process (world size 1) on hand-checkable batches: the exact batch plan,
optimizer steps and rows per iteration, ratio 1 / KL 0 before the first step, and the
loss reduction (token-mean over the minibatch, whatever the micro-batch size)."""

from __future__ import annotations

import pytest
import torch

from ray_rlhf import algo
from ray_rlhf.config import ConfigError, load_config
from ray_rlhf.learner.ppo_batch import BatchPlan, batch_plan
from ray_rlhf.types import RolloutBatch, ScoredBatch

PROMPTS = ["sort 3 1 2 =", "rev 4 5 =", "copy 7 =", "sort 9 8 ="]
N_SAMPLES = 4
RESPONSE_LENGTHS = [1, 2, 3, 5]  # per sample index: micro-batches differ in token counts


def _cfg(tmp_path, *overrides: str):
    return load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            "run.name=learner_unit",
            "learner.num_workers=1",
            "learner.zero_stage=0",
            f"ppo.prompts_per_iteration={len(PROMPTS)}",
            f"rollout.n_samples={N_SAMPLES}",
            "data.max_prompt_tokens=16",
            "data.max_response_tokens=8",
            "ppo.minibatch_size=16",
            "ppo.micro_batch_size=4",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ray_rlhf.loops.common import prepare_base_model
    from ray_rlhf.loops.rm_local import ensure_process_group

    ensure_process_group()
    out = tmp_path_factory.mktemp("base")
    return prepare_base_model(load_config(None, [f"run.output_dir={out}"]), out)


def _scored_batch(model_dir) -> ScoredBatch:
    """16 rows: each prompt followed by 1, 2, 3 or 5 response tokens, right padded."""
    from ray_rlhf.models.builders import load_tokenizer

    tok = load_tokenizer(model_dir)
    gen = torch.Generator().manual_seed(0)
    vocab = len(tok)
    rows, responses = [], []
    for prompt in PROMPTS:
        ids = tok(prompt)["input_ids"]
        for length in RESPONSE_LENGTHS:
            resp = torch.randint(4, vocab, (length,), generator=gen).tolist()
            rows.append((ids, resp))
            responses.append(tok.decode(resp))
    width = max(len(p) + len(r) for p, r in rows)
    n = len(rows)
    input_ids = torch.zeros(n, width, dtype=torch.long)
    attn = torch.zeros(n, width, dtype=torch.bool)
    resp_mask = torch.zeros(n, width, dtype=torch.bool)
    for i, (p, r) in enumerate(rows):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attn[i, : len(p) + len(r)] = True
        resp_mask[i, len(p) : len(p) + len(r)] = True
    batch = RolloutBatch(
        prompt_ids=[str(i) for i in range(len(PROMPTS))],
        prompts=PROMPTS,
        responses=responses,
        input_ids=input_ids,
        attention_mask=attn,
        response_mask=resp_mask,
        sample_logprobs=torch.zeros(n, width),
        finished=torch.ones(n, dtype=torch.bool),
        n_samples=N_SAMPLES,
    )
    scores = torch.randn(n, generator=gen)
    return ScoredBatch(batch, scores, algo.place_last_token_rewards(scores, resp_mask))


def test_batch_plan_cuts_the_iteration_into_whole_steps(tmp_path):
    cfg = _cfg(tmp_path, "ppo.minibatch_size=8", "ppo.micro_batch_size=4")
    assert batch_plan(cfg, 1) == BatchPlan(rows=16, minibatch=8, micro=4)
    assert (batch_plan(cfg, 1).grad_accum, batch_plan(cfg, 1).steps) == (2, 2)
    two = batch_plan(cfg, 2)
    assert (two.rows, two.minibatch, two.micro, two.grad_accum, two.steps) == (8, 4, 4, 1, 2)
    with pytest.raises(ValueError, match="multiples of the 3 learners"):
        batch_plan(cfg, 3)


def test_config_rejects_k1_as_a_loss_term(tmp_path):
    with pytest.raises(ConfigError, match=r"ppo\.kl\.estimator.*zero expected gradient"):
        _cfg(tmp_path, "ppo.kl.placement=loss")
    assert _cfg(tmp_path, "ppo.kl.placement=loss", "ppo.kl.estimator=k3").ppo.kl.estimator == "k3"


def _learner(tmp_path, model_dir, *overrides):
    from ray_rlhf.learner.ppo import PPOLearner

    torch.manual_seed(0)
    return PPOLearner(model_dir, _cfg(tmp_path, *overrides))


def test_steps_rows_and_a_first_step_at_ratio_one(tmp_path, model_dir):
    learner = _learner(
        tmp_path, model_dir, "ppo.minibatch_size=8", "ppo.micro_batch_size=4", "ppo.epochs=2"
    )
    exp, stats = learner.make_experience(_scored_batch(model_dir))
    assert stats["train/kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference
    out = learner.train(exp, seed=0)
    assert out["train/optimizer_steps"] == 4  # 16 rows / 8 per step x 2 epochs
    assert out["train/rows"] == 32
    assert learner.policy.global_steps == 4
    # A second iteration starts at an accumulation boundary: exactly 4 more steps.
    exp, stats = learner.make_experience(_scored_batch(model_dir))
    assert stats["train/kl"] != 0.0  # the policy moved away from the reference
    assert learner.train(exp, seed=1)["train/optimizer_steps"] == 4


def _hook_grads(learner, exp, name: str) -> list[torch.Tensor]:
    """The gradient contributions of each micro-batch to parameter `name` during train."""
    param = dict(learner.policy.module.named_parameters())[name]
    seen: list[torch.Tensor] = []
    handle = param.register_hook(lambda g: seen.append(g.detach().clone()))
    out = learner.train(exp, seed=0)
    handle.remove()
    return seen, out


def test_one_minibatch_skips_the_old_logprob_forward_exactly(tmp_path, model_dir):
    """One epoch of one minibatch: all 4 micro-batches run before the only optimizer step,
    so the old logprobs are the training forward's; skipping the separate forward gives the
    same gradients as computing it, and the logprob gap to the sampler is still logged."""
    name = "model.layers.0.self_attn.q_proj.weight"
    grads = {}
    for skip in (True, False):
        learner = _learner(tmp_path, model_dir, "ppo.kl.coef=0")
        assert learner.old_logprobs_from_training
        learner.old_logprobs_from_training = skip
        exp, stats = learner.make_experience(_scored_batch(model_dir))
        assert (exp.old_logprobs is None) == skip
        grads[skip], out = _hook_grads(learner, exp, name)
        assert out["train/optimizer_steps"] == 1
        assert out["train/ratio_mean"] == pytest.approx(1.0, abs=1e-6)
        assert out["train/approx_kl"] == pytest.approx(0.0, abs=1e-7)
        # Logged by make_experience, or by train when it has the old logprobs.
        assert (stats | out)["train/logprob_diff_max"] > 0  # the fake sampler's are 0
    assert len(grads[True]) == len(grads[False]) == 4
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)
    two = _learner(tmp_path, model_dir, "ppo.minibatch_size=8", "ppo.lr=1e-2")
    assert not two.old_logprobs_from_training
    exp, _ = two.make_experience(_scored_batch(model_dir))
    out = two.train(exp, seed=0)
    assert out["train/approx_kl"] > 1e-6  # the second minibatch is off-policy


def test_accumulated_gradient_is_the_minibatch_token_mean(tmp_path, model_dir):
    """The gradient DeepSpeed accumulates over 4 micro-batches of unequal token counts equals
    the gradient of one token-mean loss over the 16-row minibatch (a mean of micro-batch
    means would weigh the short responses' tokens more)."""
    from ray_rlhf.algo.tokens import token_logprobs
    from ray_rlhf.models.builders import load_policy

    learner = _learner(tmp_path, model_dir)
    learner.old_logprobs_from_training = False  # compare against explicit old logprobs
    exp, _ = learner.make_experience(_scored_batch(model_dir))
    name = "model.layers.0.self_attn.q_proj.weight"
    seen, _ = _hook_grads(learner, exp, name)
    assert len(seen) == 4
    accumulated = torch.stack(seen).sum(0)

    reference = load_policy(model_dir)
    weight = dict(reference.named_parameters())[name]

    def grad_of(rows: torch.Tensor) -> torch.Tensor:
        part = exp.rows(rows)
        logits = reference(input_ids=part.input_ids, attention_mask=part.attention_mask.long())
        loss, _ = algo.policy_loss(
            token_logprobs(logits.logits, part.input_ids),
            part.old_logprobs, part.advantages, part.mask, 0.2,
        )
        weight.grad = None
        loss.backward()
        return weight.grad.clone()

    expected = grad_of(torch.arange(16))
    torch.testing.assert_close(accumulated, expected, rtol=1e-4, atol=1e-7)
    # The alternative reduction, a mean of the 4 micro-batches' own token-means (same order
    # as train's shuffle), is measurably different on these unequal lengths.
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    mean_of_means = sum(grad_of(rows) for rows in order.split(4)) / 4
    assert (mean_of_means - expected).norm() > 0.01 * expected.norm()


def test_async_mode_computes_old_logprobs_and_weights_the_loss(tmp_path, model_dir):
    """Async mode with one epoch of one minibatch still runs the old-logprob forward, and the
    accumulated gradient is that of the loss weighted by min(pi_old / pi_sampler, cap)."""
    from ray_rlhf.algo.tokens import token_logprobs
    from ray_rlhf.models.builders import load_policy

    name = "model.layers.0.self_attn.q_proj.weight"
    grads = {}
    for correction in ("truncated", "none"):
        overrides = ["ppo.kl.coef=0", "ppo.async_rollouts=true", f"ppo.is_correction={correction}"]
        learner = _learner(tmp_path, model_dir, *overrides)
        assert learner.plan.steps == 1 and not learner.old_logprobs_from_training
        exp, stats = learner.make_experience(_scored_batch(model_dir))
        assert exp.old_logprobs is not None
        # The fake sampler's logprobs are 0, so pi_old / pi_sampler = pi_old(y) < 1.
        ratio = torch.exp(exp.old_logprobs) * exp.mask
        assert stats["train/is_ratio_mean"] == pytest.approx(
            float(ratio.sum() / exp.mask.sum()), rel=1e-5
        )
        assert stats["train/is_ratio_max"] == pytest.approx(float(ratio.max()), rel=1e-5)
        assert stats["train/is_truncated_frac"] == 0.0
        if correction == "none":
            assert exp.is_weights is None
        else:
            torch.testing.assert_close(exp.is_weights, ratio)
        seen, _ = _hook_grads(learner, exp, name)
        grads[correction] = torch.stack(seen).sum(0)

    reference = load_policy(model_dir)
    weight = dict(reference.named_parameters())[name]
    logits = reference(input_ids=exp.input_ids, attention_mask=exp.attention_mask.long()).logits
    weights = torch.exp(exp.old_logprobs) * exp.mask
    logprobs = token_logprobs(logits, exp.input_ids)
    loss, _ = algo.policy_loss(
        logprobs, exp.old_logprobs, exp.advantages, exp.mask, 0.2, is_weights=weights
    )
    loss.backward()
    torch.testing.assert_close(grads["truncated"], weight.grad, rtol=1e-4, atol=1e-7)
    gap = (grads["truncated"] - grads["none"]).norm()
    assert gap > 0.1 * grads["none"].norm()  # the weights changed the update


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path, model_dir):
    """`learner.gradient_checkpointing` recomputes activations in the backward pass: the
    layers are checkpointed and the micro-batch gradients match the stored-activation run.
    With one rank at ZeRO-0 the engine's gradient all-reduce (a flat copy of every gradient)
    is off."""
    name = "model.layers.0.self_attn.q_proj.weight"
    grads = {}
    for on in (False, True):
        learner = _learner(tmp_path, model_dir, f"learner.gradient_checkpointing={on}")
        assert learner.policy.module.is_gradient_checkpointing == on
        assert not learner.reference.is_gradient_checkpointing
        assert learner.policy.enable_backward_allreduce is False
        exp, _ = learner.make_experience(_scored_batch(model_dir))
        grads[on], out = _hook_grads(learner, exp, name)
        assert out["train/optimizer_steps"] == 1
    assert len(grads[True]) == len(grads[False]) == 4
    for a, b in zip(grads[True], grads[False], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)


def test_gradient_checkpointing_on_a_model_without_support_names_the_key():
    from ray_rlhf.learner.engine import enable_gradient_checkpointing

    with pytest.raises(ValueError, match="learner.gradient_checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))
