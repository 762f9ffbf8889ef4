"""Meta-learned reward model end to end on the tiny model: `jobs/meta_rm.py` runs 2 outer
steps with 2 domains as parallel Ray tasks, is killed (SIGKILL of its process group) once
outer step 1's state is saved, and the rerun continues at step 2 and finishes; the exported
dir has `train-rm`'s layout and metadata and scores in `RewardScorer(kind="model")`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from paused_jobs import kill_when_paused

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
_PAUSE_TIMEOUT_S = 300
_OVERRIDES = [
    "data.toyworld.domains=[sort, rev]",
    "data.toyworld.n_sft=50",
    "data.toyworld.n_pref_train=120",
    "data.toyworld.n_pref_test=40",
    "meta.outer_steps=2",
    "meta.domains_per_step=2",
    "meta.inner_steps=2",
    "meta.inner_prompts=4",
    "meta.n_samples=2",
    "meta.outer_pairs=8",
    "meta.outer_lr=0.01",
]
# The keys of `ray_rlhf.json` that distributed/rm_trainer.py's _metadata writes.
_TRAIN_RM_KEYS = set(
    "stage step base_model head training eval_accuracy eval_pairs normalization".split()
)


def test_killed_meta_rm_job_resumes_and_exports_a_loadable_reward_model(
    tmp_path, base_model, ray_session
):
    from ray_rlhf.config import RewardConfig
    from ray_rlhf.data.tokenize import encode_prompt_response, pad_batch
    from ray_rlhf.loops import meta_rm
    from ray_rlhf.models.builders import load_reward_model, load_tokenizer
    from ray_rlhf.models.checkpoint import load_json, load_tensors
    from ray_rlhf.reward.scorer import RewardScorer
    from ray_rlhf.types import RolloutBatch

    args = [
        f"model.path={base_model}",
        f"run.output_dir={tmp_path}",
        "run.name=meta_it",
        f"resources.address={ray_session.get_runtime_context().gcs_address}",
        *_OVERRIDES,
    ]
    run_dir = tmp_path / "meta_it"
    kill_when_paused(
        "jobs/meta_rm.py",
        "pause_meta_after_steps: 1",
        args,
        run_dir,
        tmp_path / "job.log",
        _PAUSE_TIMEOUT_S,
    )
    state_dir = run_dir / meta_rm.STATE_DIR
    assert load_json(state_dir / "state.json")["step"] == 1
    assert [r["step"] for r in read_metrics(run_dir / meta_rm.METRICS_DIR)] == [1]
    assert not (run_dir / "reward_model").exists() and not (run_dir / "DONE.json").exists()
    after_step_1 = load_tensors(state_dir / "rm.safetensors")

    result = meta_rm.run_job(load_config(None, args))
    logged = (run_dir / "logs" / "driver.log").read_text()  # the job's, then this run's
    assert "starting" in logged and "resuming at outer step 2" in logged

    rows = read_metrics(run_dir / meta_rm.METRICS_DIR)
    assert [r["step"] for r in rows] == [1, 2]
    for row in rows:  # both domains ran in every outer step, each with its own inner loop
        for key in ("outer_loss", "inner_reward", "kl"):
            assert {f"meta/{key}/sort", f"meta/{key}/rev"} <= row.keys()
        assert row["meta/kl"] > 0 and row["meta/grad_norm"] > 0
    assert load_json(state_dir / "state.json")["step"] == 2
    assert (run_dir / "DONE.json").is_file()

    out = result.reward_model_dir
    meta = json.loads((out / "ray_rlhf.json").read_text())
    assert set(meta) == _TRAIN_RM_KEYS
    assert (meta["stage"], meta["step"], meta["head"]) == ("meta_rm", 2, "scalar")
    assert meta["base_model"] == str(Path(base_model).resolve())
    assert meta["normalization"]["responses"] == 2 * meta["eval_pairs"] == 80
    model = load_reward_model(out).eval()
    assert model.config.ray_rlhf_head == "scalar"
    final = model.state_dict()
    assert final.keys() == after_step_1.keys()
    assert any(not torch.equal(final[k], after_step_1[k]) for k in final)  # step 2 applied

    ppo_cfg = load_config(None, ["reward.kind=model", f"reward.model_path={out}"])
    tokenizer = load_tokenizer(out)
    prompts, responses = ["sort 3 1 2 =", "rev 4 5 6 ="], ["1 2 3", "6 5 4 !", "3 1 2", "4 5"]
    examples = [
        encode_prompt_response(tokenizer, prompts[i // 2], r) for i, r in enumerate(responses)
    ]
    padded = pad_batch(examples, tokenizer.pad_token_id)
    batch = RolloutBatch(
        prompt_ids=["a", "b"],
        prompts=prompts,
        responses=responses,
        sample_logprobs=torch.zeros(padded["input_ids"].shape),
        finished=torch.ones(4, dtype=torch.bool),
        n_samples=2,
        **padded,
    )
    scored = RewardScorer(RewardConfig(**{**vars(ppo_cfg.reward), "clip": 100.0})).score(batch)
    with torch.no_grad():
        values = model(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"].long()
        ).logits.squeeze(-1)  # (4, T)
    last = padded["attention_mask"].sum(dim=1) - 1
    torch.testing.assert_close(scored.scores, values[torch.arange(4), last], atol=1e-5, rtol=1e-5)
