"""Contrastive rewards end to end on the tiny model: the offline baseline job is killed
midway (SIGKILL of its process group while it waits at the chaos hook after its first
shard) and rerun, leaving exactly one complete row per prompt; then 2 PPO iterations with
the baselines subtracted in the reward actor."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest
from paused_jobs import kill_when_paused

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_OVERRIDES = [
    "data.toyworld.n_train_prompts=6",
    "data.toyworld.n_test_prompts=2",
    "rollout.num_actors=1",
    "rollout.kv_cache_mib=16",
    "reward.num_actors=1",
    "contrastive.k=2",
    "contrastive.chunk_prompts=2",
]
_PAUSE_TIMEOUT_S = 240


def test_killed_baseline_job_resumes_then_ppo_uses_the_baselines(tmp_path, base_model, ray_session):
    from ray_rlhf.loops import baselines, ppo
    from ray_rlhf.loops.common import prepare_run_dir
    from ray_rlhf.loops.preflight import preflight

    args = [
        f"model.path={base_model}",
        f"run.output_dir={tmp_path}",
        "run.name=baselines",
        f"resources.address={ray_session.get_runtime_context().gcs_address}",
        *_OVERRIDES,
    ]
    run_dir = tmp_path / "baselines"
    kill_when_paused(
        "jobs/sample_baselines.py",
        "pause_baselines_after_shards: 1",
        args,
        run_dir,
        tmp_path / "job.log",
        _PAUSE_TIMEOUT_S,
    )
    shard_dir = run_dir / baselines.SHARD_DIR
    assert [p.name for p in shard_dir.glob("shard-*")] == ["shard-00000.parquet"]
    assert not (run_dir / "baselines.parquet").exists()
    assert not (run_dir / "DONE.json").exists()
    first = datasets.Dataset.from_parquet(str(shard_dir / "shard-00000.parquet")).to_list()
    (shard_dir / ".shard-00001.parquet.tmp").write_bytes(b"half a file")  # never read

    cfg = load_config(None, args)
    result = baselines.run_job(cfg)

    rows = datasets.Dataset.from_parquet(str(result.path)).to_list()
    ids = [r["prompt_id"] for r in rows]
    assert ids == [f"train-{i:06d}" for i in range(6)] + ["test-000000", "test-000001"]
    assert result.failed == []
    assert len(list(shard_dir.glob("shard-*.parquet"))) == 4  # 1 before the kill + 3 after
    for row in rows:
        assert len(row["rewards"]) == 2 and row["num_failed"] == 0
        assert row["baseline"] == pytest.approx(sum(row["rewards"]) / 2)
    by_id = {r["prompt_id"]: r for r in rows}
    for row in first:  # the shard written before the kill was kept, not resampled
        assert by_id[row["prompt_id"]]["rewards"] == row["rewards"]
    assert (run_dir / "DONE.json").exists()

    ppo_cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            "run.name=ppo",
            *_OVERRIDES,
            "learner.num_workers=1",
            "ppo.iterations=2",
            "ppo.prompts_per_iteration=4",
            "ppo.minibatch_size=16",
            "ppo.micro_batch_size=8",
            "ppo.eval_every=2",
            "contrastive.enabled=true",
            f"contrastive.baselines_path={result.path}",
        ],
    )
    ppo_dir = prepare_run_dir(ppo_cfg)
    ppo_cfg = preflight(ppo_cfg, ppo_dir, ("ppo",), base_dir=base_model)
    out = ppo.run(ppo_cfg, ppo_dir, base_model)
    metrics = read_metrics(out.metrics_dir)
    assert [m["step"] for m in metrics] == [1, 2]
    for m in metrics:
        assert m["reward/mean"] == pytest.approx(
            m["reward/contrastive_raw"] - m["reward/contrastive_baseline"], abs=1e-5
        )
        assert m["reward/contrastive_fallback"] == 0.0
        assert m["train/adv_var_within_prompt"] >= 0.0
    assert "eval/sampled/reward" in metrics[1]  # eval prompts had baselines too
