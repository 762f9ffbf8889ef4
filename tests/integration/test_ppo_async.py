"""Async PPO end to end on the tiny model: real vLLM rollout actor, toy-world rule reward,
one DeepSpeed learner under Ray Train; iteration k + 1 is generated while k trains, with a
pool resize and a learner restart from a checkpoint."""

from __future__ import annotations

import pytest

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

_OVERRIDES = [
    "run.name=ppo_async",
    "learner.num_workers=1",
    "rollout.num_actors=1",
    "rollout.kv_cache_mib=16",
    "reward.num_actors=1",
    "ppo.prompts_per_iteration=8",
    "ppo.minibatch_size=32",
    "ppo.micro_batch_size=16",
    "ppo.lr=0.003",
    "ppo.eval_every=100",
    "ppo.checkpoint_every=1",
    "ppo.async_rollouts=true",
    "data.toyworld.n_train_prompts=64",
    "data.toyworld.n_test_prompts=8",
]


def test_async_samples_are_one_version_old_weighted_and_restartable(
    tmp_path, base_model, ray_session
):
    """Three iterations on a pool grown to 2 actors by the control file; the learner dies
    at the start of iteration 3, while iteration 3's generation is in flight, and Ray Train
    restarts it from the iteration-2 checkpoint."""
    from ray_rlhf.loops import ppo
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    overrides = [f"run.output_dir={tmp_path}", "ppo.iterations=3", "learner.max_failures=1"]
    cfg = load_config(None, [*overrides, *_OVERRIDES])
    run_dir = prepare_run_dir(cfg)
    cfg = preflight(cfg, run_dir, ("ppo",), base_dir=base_model)
    (run_dir / "control.yaml").write_text("rollout_actors: 2\nkill_learner_at_iteration: 3\n")
    rows = read_metrics(ppo.run(cfg, run_dir, base_model).metrics_dir)
    assert (run_dir / "control.yaml.kill_learner_at_iteration_fired").is_file()
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert [r["rollout/actors"] for r in rows] == [2, 2, 2]
    # The versions the rollout actors recorded. Iteration 1 samples the base weights now
    # (nothing was launched ahead); iteration 2 was generated during iteration 1's training,
    # so it is one version behind the learner. Iteration 3's generation was in flight when
    # the learner died: it is discarded, and the restarted run samples the restored weights.
    assert [r["rollout/policy_version"] for r in rows] == [0, 0, 2]
    assert [r["rollout/staleness"] for r in rows] == [0, 1, 0]
    # On-policy, pi_old / pi_sampler = 1 up to numerics (both actors serve the same weights,
    # the restored ones after the restart); one version behind, the logprobs differ.
    for row in (rows[0], rows[2]):
        assert row["train/is_ratio_max"] == pytest.approx(1.0, abs=1e-3)
        assert row["train/logprob_diff_max"] < 1e-4
    stale = rows[1]
    assert stale["train/logprob_diff_max"] > 1e-3
    assert stale["train/is_ratio_max"] > 1.001
    assert 0.5 < stale["train/is_ratio_mean"] < 2.0
    assert 0.0 <= stale["train/is_truncated_frac"] <= 1.0
    assert rows[2]["train/param_norm_start"] == pytest.approx(rows[1]["train/param_norm"])
