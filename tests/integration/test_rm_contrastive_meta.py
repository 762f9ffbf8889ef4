"""Secrets of RLHF II §3c-3d end to end: the MetaRM step under DeepSpeed ZeRO 0/1/2 with 1 and
2 ranks against a plain-torch reference, SwAV prototypes through a checkpoint, and SimCSE,
SwAV and MetaRM reward models trained under Ray Train with 2 ZeRO-2 workers."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import pytest
import torch

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

PAIRS, META_PROMPTS, K, STEPS, ETA, LR = 4, 2, 3, 3, 2.0, 0.01
STAGES = (0, 1, 2)
SIDES = ("chosen", "rejected")


# ------------------------------------------------------------- MetaRM step vs a reference


def random_rows(gen: torch.Generator, n: int, vocab: int) -> dict[str, torch.Tensor]:
    """n right-padded rows of 4..9 random tokens, the first 2 of them the prompt."""
    lengths = torch.randint(4, 10, (n,), generator=gen)
    width = int(lengths.max())
    positions = torch.arange(width)[None, :]
    attention = positions < lengths[:, None]
    ids = torch.randint(3, vocab, (n, width), generator=gen) * attention
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "response_mask": attention & (positions >= 2),
    }


def random_batches(vocab: int) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """STEPS (pair batch of PAIRS, meta batch of META_PROMPTS x K) of random tokens."""
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(STEPS):
        sides = random_rows(gen, 2 * PAIRS, vocab)
        halves = {k: v.chunk(2) for k, v in sides.items()}  # chosen rows, rejected rows
        pairs = {f"{side}_{k}": halves[k][i] for k in sides for i, side in enumerate(SIDES)}
        batches.append((pairs, random_rows(gen, META_PROMPTS * K, vocab)))
    return batches


def rank_shard(batch: dict[str, torch.Tensor], rank: int, world: int, group: int) -> dict:
    """This rank's contiguous 1/world of the rows, in groups of `group` rows."""
    n = batch["input_ids" if "input_ids" in batch else "chosen_input_ids"].shape[0] // group
    rows = torch.arange(n * group).view(n, group)[rank * n // world : (rank + 1) * n // world]
    return {k: v[rows.reshape(-1)] for k, v in batch.items()}


def meta_config(world: int, zero: int, eta: float = ETA):
    return load_config(
        None,
        [
            f"learner.num_workers={world}",
            f"learner.zero_stage={zero}",
            "learner.grad_clip=0",
            f"rm.batch_size={PAIRS}",
            f"rm.lr={LR}",
            "rm.warmup_steps=0",
            f"rm.steps={STEPS}",
            "rm.meta.enabled=true",
            f"rm.meta.k={K}",
            f"rm.meta.batch_size={META_PROMPTS}",
            f"rm.meta.eta={eta}",
            "data.meta_responses_path=unused",
        ],
    )


def meta_worker(rank: int, world: int, store: str, model_dir: str, out_dir: str) -> None:
    """One rank: a MetaRM learner per ZeRO stage, STEPS steps on its shard, weights saved."""
    from ray_rlhf.learner.rm import RMLearner
    from ray_rlhf.models.builders import load_reward_model

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world
    )
    vocab = load_reward_model(model_dir).config.vocab_size
    for zero in STAGES:
        cfg = meta_config(world, zero)
        learner = RMLearner(
            model_dir, cfg.model, cfg.learner, cfg.rm, micro_batch_per_worker=PAIRS // world
        )
        for pairs, meta in random_batches(vocab):
            learner.train_step(rank_shard(pairs, rank, world, 1), rank_shard(meta, rank, world, K))
        weights = learner.state_dict()
        if rank == 0:
            torch.save(weights, Path(out_dir) / f"zero{zero}_world{world}.pt")
    torch.distributed.destroy_process_group()


def reference_weights(model_dir: str, eta: float) -> dict[str, torch.Tensor]:
    """The same STEPS in plain torch, one process, the global batches: `meta_rm_backward`
    with `loss.backward`, AdamW as `init_engine` builds it, no DeepSpeed."""
    from ray_rlhf.algo.rm_contrastive import meta_difference, meta_rm_backward
    from ray_rlhf.algo.rm_loss import bradley_terry_loss
    from ray_rlhf.learner.engine import warmup_cosine
    from ray_rlhf.models.builders import last_token_values, load_reward_model, score_positions

    model = load_reward_model(model_dir)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.0, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(STEPS, 0))

    def scores(rows: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = rows["attention_mask"]
        return last_token_values(score_positions(model, rows["input_ids"], mask.long()), mask)

    for pairs, meta in random_batches(model.config.vocab_size):
        optimizer.zero_grad()
        keys = ("input_ids", "attention_mask")
        sides = {k: torch.cat([pairs[f"chosen_{k}"], pairs[f"rejected_{k}"]]) for k in keys}
        meta_rm_backward(
            params,
            lambda meta=meta: meta_difference(scores(meta), K),
            lambda sides=sides: (bradley_terry_loss(*scores(sides).chunk(2))[0], None),
            eta,
        )
        optimizer.step()
        schedule.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def toy_model_dir(tmp_path_factory) -> Path:
    from ray_rlhf.loops.common import prepare_base_model

    out = tmp_path_factory.mktemp("toy")
    return prepare_base_model(load_config(None, [f"run.output_dir={out}"]), out)


@pytest.fixture(scope="module")
def meta_steps(toy_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("meta_steps")
    for world in (1, 2):
        store = out / f"store{world}"
        torch.multiprocessing.spawn(
            meta_worker, args=(world, str(store), str(toy_model_dir), str(out)), nprocs=world
        )
    return out


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("zero", STAGES)
def test_meta_step_under_zero_matches_the_plain_torch_reference(
    meta_steps, toy_model_dir, zero, world
):
    got = torch.load(meta_steps / f"zero{zero}_world{world}.pt")
    want = reference_weights(str(toy_model_dir), ETA)
    plain = reference_weights(str(toy_model_dir), 0.0)  # the same steps without the ascent
    assert got.keys() == want.keys()
    # BT and J see reward differences only, so the score bias's true gradient is 0; its float
    # noise differs with the reduction order (2 ranks) and Adam turns noise into +-lr steps.
    for name in sorted(want.keys() - {"score.bias"}):
        torch.testing.assert_close(got[name], want[name], atol=2e-5, rtol=1e-4)
    gap = max(float((want[k] - plain[k]).abs().max()) for k in want)
    assert gap > 1e-3  # the ascent changes the result well beyond the tolerance


def test_swav_prototypes_train_and_come_back_from_a_checkpoint(toy_model_dir, tmp_path):
    torch.multiprocessing.spawn(
        swav_worker, args=(str(tmp_path / "store"), str(toy_model_dir), str(tmp_path)), nprocs=1
    )
    result = torch.load(tmp_path / "swav.pt")
    assert not torch.allclose(result["initial"], result["trained"])  # Adam moved them
    torch.testing.assert_close(result["restored"], result["trained"], atol=0, rtol=0)
    assert result["exported_keys"] and not any("swav" in k for k in result["exported_keys"])


def swav_worker(rank: int, store: str, model_dir: str, out_dir: str) -> None:
    """Two SwAV steps, a checkpoint, and a fresh learner (other seed) restored from it."""
    from ray_rlhf.learner.rm import RMLearner
    from ray_rlhf.learner.rm_representation import PROTOTYPES_KEY
    from ray_rlhf.models.builders import load_reward_model

    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=0, world_size=1
    )
    overrides = ["learner.num_workers=1", f"rm.batch_size={PAIRS}", "rm.contrastive.kind=swav"]
    cfg = load_config(None, [*overrides, "rm.contrastive.prototypes=8"])
    vocab = load_reward_model(model_dir).config.vocab_size

    def learner(seed: int) -> RMLearner:
        return RMLearner(
            model_dir, cfg.model, cfg.learner, cfg.rm, micro_batch_per_worker=PAIRS, seed=seed
        )

    first = learner(0)
    prototypes = first.engine.module.get_parameter(PROTOTYPES_KEY)
    initial = prototypes.detach().clone()
    for pairs, _ in random_batches(vocab)[:2]:
        first.train_step(pairs)
    first.save_checkpoint(Path(out_dir) / "ckpt")
    second = learner(1)
    second.load_checkpoint(Path(out_dir) / "ckpt")
    result = {
        "initial": initial,
        "trained": prototypes.detach().clone(),
        "restored": second.engine.module.get_parameter(PROTOTYPES_KEY).detach().clone(),
        "exported_keys": sorted(second.state_dict()),
    }
    torch.save(result, Path(out_dir) / "swav.pt")
    torch.distributed.destroy_process_group()


# ------------------------------------------------------------- Ray Train runs


def rm_overrides(out: Path, name: str) -> list[str]:
    return [
        f"run.output_dir={out}",
        f"run.name={name}",
        "learner.num_workers=2",
        "learner.zero_stage=2",
        "rm.steps=10",
        "rm.batch_size=16",
        "rm.lr=0.003",
        "rm.log_every=2",
        "rm.eval_every=10",
        "data.toyworld.n_sft=100",
        "data.toyworld.n_pref_train=300",
        "data.toyworld.n_pref_test=100",
    ]


@pytest.fixture(scope="module")
def contrastive_runs(tmp_path_factory, ray_session):
    from ray_rlhf.loops import rm

    out = tmp_path_factory.mktemp("runs")
    runs = {}
    for kind, target in (("simcse", "responses"), ("swav", "differences")):
        extra = [f"rm.contrastive.kind={kind}", f"rm.contrastive.target={target}"]
        cfg = load_config(None, [*rm_overrides(out, f"{kind}_it"), *extra])
        runs[kind] = (cfg, rm.run_job(cfg))
    return runs


@pytest.mark.parametrize("kind", ["simcse", "swav"])
def test_contrastive_rms_train_under_ray_train(contrastive_runs, kind):
    from ray_rlhf.models.builders import load_reward_model

    cfg, result = contrastive_runs[kind]
    rows = read_metrics(cfg.run.run_dir / "rm")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    for key in ("rm/contrastive_loss", "rm/representation_alignment", "rm/uniformity"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert rows[-1]["rm/contrastive_loss"] < rows[0]["rm/contrastive_loss"]
    assert all(-1 <= r["rm/representation_alignment"] <= 1 for r in rows)
    assert 0 <= result.eval_accuracy <= 1
    load_reward_model(result.reward_model_dir)  # exported without the SwAV prototypes


def write_meta_responses(path: Path, cfg, prompts: int = 64, k: int = 4) -> Path:
    """Toy-world prompts with k noisy solver responses each (what a policy might sample)."""
    from ray_rlhf.data.toyworld import build_splits
    from ray_rlhf.data.toyworld.splits import noisy_solver_response
    from ray_rlhf.data.toyworld.tasks import parse_prompt

    rng = random.Random(0)
    texts = sorted(set(build_splits(cfg.data.toyworld).pref_train["prompt"]))[:prompts]
    with path.open("w") as f:
        for text in texts:
            task = parse_prompt(text)
            responses = [noisy_solver_response(rng, task, cfg.data.toyworld) for _ in range(k)]
            f.write(json.dumps({"prompt": text, "responses": responses}) + "\n")
    return path


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory, ray_session):
    from ray_rlhf.loops import rm

    out = tmp_path_factory.mktemp("runs")
    overrides = rm_overrides(out, "metarm_it")
    meta_path = write_meta_responses(out / "meta.jsonl", load_config(None, overrides))
    extra = ["rm.meta.enabled=true", "rm.meta.k=4", "rm.meta.batch_size=8"]
    cfg = load_config(None, [*overrides, *extra, f"data.meta_responses_path={meta_path}"])
    return cfg, rm.run_job(cfg)


def test_metarm_trains_under_ray_train(meta_run):
    from ray_rlhf.models.builders import load_reward_model

    cfg, result = meta_run
    rows = read_metrics(cfg.run.run_dir / "rm")
    assert [r["step"] for r in rows] == [2, 4, 6, 8, 10]
    low, high = 0.5 * 3 / 4, 3 / 4  # J of k = 4: (k - 1) / k times a mean of sigma(|.|)
    assert all(low <= r["rm/meta_difference"] <= high for r in rows)
    assert all(r["rm/meta_grad_norm"] > 0 for r in rows)
    assert all(r["rm/meta_difference_after"] > r["rm/meta_difference"] for r in rows)
    trained = load_reward_model(result.reward_model_dir).state_dict()
    start = load_reward_model(result.base_dir, seed=cfg.run.seed).state_dict()
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k]) for k in start)
    assert not torch.equal(trained["score.weight"], start["score.weight"])
