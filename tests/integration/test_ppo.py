"""PPO end to end on the tiny model: 1 rollout actor (vLLM), 1 reward actor (toy-world rule),
2 DeepSpeed ZeRO-2 learners under Ray Train; then a stop-and-resume."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

_OVERRIDES = [
    "learner.num_workers=2",
    "learner.zero_stage=2",
    "rollout.num_actors=1",
    "rollout.kv_cache_mib=16",
    "reward.num_actors=1",
    "ppo.prompts_per_iteration=8",
    "ppo.minibatch_size=16",
    "ppo.micro_batch_size=8",
    "ppo.lr=0.001",
    "ppo.eval_every=2",
    "data.toyworld.n_train_prompts=64",
    "data.toyworld.n_test_prompts=16",
]


def _cfg(tmp_path, *extra):
    return load_config(None, [f"run.output_dir={tmp_path}", "run.name=ppo_it", *_OVERRIDES, *extra])


def _prepare(cfg, base_model):
    """(config with resolved token limits, run dir), as `ppo.run_job` prepares them."""
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    run_dir = prepare_run_dir(cfg)
    return preflight(cfg, run_dir, ("ppo",), base_dir=base_model), run_dir


@pytest.fixture(scope="module")
def two_iterations(tmp_path_factory, base_model, ray_session):
    from ray_rlhf.loops import ppo

    cfg = _cfg(tmp_path_factory.mktemp("runs"), "ppo.iterations=2", "ppo.checkpoint_every=1")
    cfg, run_dir = _prepare(cfg, base_model)
    return cfg, run_dir, ppo.run(cfg, run_dir, base_model)


def test_metrics_written_and_logprobs_match_after_sync(two_iterations):
    cfg, run_dir, result = two_iterations
    rows = read_metrics(result.metrics_dir)
    assert [r["step"] for r in rows] == [1, 2]
    for key in (
        "reward/mean",
        "train/kl",
        "train/policy_loss",
        "timing/generate",
        "timing/train",
        "timing/sync",
        "perf/tokens_per_s",
        "rollout/true_reward",
    ):
        assert all(key in r for r in rows), key
    assert "eval/sampled/true_reward" in rows[1]
    # Iteration 2 sampled with the weights synced after iteration 1: vLLM's sampling
    # logprobs must equal the learner's logprobs of the same tokens.
    assert rows[1]["train/logprob_diff_max"] < 1e-4, rows[1]["train/logprob_diff_max"]
    assert (result.metrics_dir / "tensorboard").is_dir()


def test_parameters_changed(two_iterations, base_model):
    from transformers import AutoModelForCausalLM

    _, _, result = two_iterations
    before = AutoModelForCausalLM.from_pretrained(base_model).state_dict()
    after = AutoModelForCausalLM.from_pretrained(result.policy_dir).state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, changed


def test_resume_continues_from_saved_state(two_iterations, base_model):
    from ray_rlhf.data.sampler import global_batch_indices
    from ray_rlhf.loops import ppo

    cfg, run_dir, _ = two_iterations
    # Also grow the rollout pool 1 -> 2 between iterations through the run's control file.
    (run_dir / "control.yaml").write_text("rollout_actors: 2\n")
    more = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, iterations=3))
    result = ppo.run(more, run_dir, base_model)
    rows = read_metrics(result.metrics_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]  # iterations 1-2 were not rerun
    third = rows[2]
    n_prompts = cfg.data.toyworld.n_train_prompts
    expected = global_batch_indices(n_prompts, cfg.ppo.prompts_per_iteration, 2, cfg.run.seed)
    assert third["data/first_prompt_index"] == float(expected[0])
    assert third["train/param_norm_start"] == pytest.approx(rows[1]["train/param_norm"], rel=1e-9)
    # Both rollout actors (the new one included) served the restored weights.
    assert third["rollout/actors"] == 2
    assert third["train/logprob_diff_max"] < 1e-4


def test_a_resize_that_cannot_be_placed_is_reported_and_the_run_goes_on(
    tmp_path, base_model, ray_session
):
    """The session cluster has 6 CPUs: 2 learners + a 3-CPU rollout actor + the reward actor
    fill it, so growing the pool to 2 can never be placed. After rollout.resize_timeout_s
    the run says so once (metrics + notice), keeps 1 actor and is not retried."""
    from ray_rlhf.loops import ppo

    cfg = _cfg(
        tmp_path, "ppo.iterations=2", "rollout.cpus_per_actor=3", "rollout.resize_timeout_s=3"
    )
    cfg, run_dir = _prepare(cfg, base_model)
    (run_dir / "control.yaml").write_text("rollout_actors: 2\n")
    result = ppo.run(cfg, run_dir, base_model)
    rows = read_metrics(result.metrics_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["rollout/actors"] for r in rows] == [1, 1]
    assert rows[0]["faults/resize_unplaced"] == 1
    assert rows[0]["events/notice"].startswith(
        "rollout pool stays at 1 actor(s): 1 of 1 new rollout actor(s) did not start within "
        "rollout.resize_timeout_s=3 s: the cluster has no free CPU: 3"
    )
    assert "faults/resize_unplaced" not in rows[1]  # not retried for the same size


def test_gae_critic_zero3_broadcast_sync(tmp_path, base_model, ray_session):
    """The other code paths: critic + GAE, ZeRO-3 gathers, the gloo broadcast transport,
    adaptive KL in the loss."""
    from ray_rlhf.loops import ppo

    cfg = _cfg(
        tmp_path,
        "ppo.iterations=2",
        "ppo.advantage=gae",
        "learner.zero_stage=3",
        "rollout.sync_transport=broadcast",
        "ppo.kl.placement=loss",
        "ppo.kl.adaptive=true",
        "ppo.kl.estimator=k3",
    )
    result = ppo.run(*_prepare(cfg, base_model), base_model)
    rows = read_metrics(result.metrics_dir)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(r["train/value_loss"] > 0 for r in rows)
    assert rows[1]["train/kl_coef"] != rows[0]["train/kl_coef"]  # the controller moved
    assert rows[1]["train/logprob_diff_max"] < 1e-4  # broadcast delivered the ZeRO-3 weights
    assert rows[1]["train/param_norm_start"] == pytest.approx(rows[0]["train/param_norm"])
