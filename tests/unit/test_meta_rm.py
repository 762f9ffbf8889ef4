"""Meta-learned RM on the tiny model, in-process: the functional policy, the per-domain
batches, the domain meta-gradient (K = 1: first order == full unroll), resume, config."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.config import ConfigError, MetaConfig, load_config
from ray_rlhf.learner.meta_policy import (
    adapted_parameter_names,
    policy_logits,
    sample_responses,
    sequence_logprobs,
)

OVERRIDES = [
    "data.toyworld.domains=[sort, rev, copy]",
    "data.toyworld.n_sft=50",
    "data.toyworld.n_pref_train=90",
    "data.toyworld.n_pref_test=20",
    "data.max_prompt_tokens=32",
    "data.max_response_tokens=8",
    "meta.inner_prompts=2",
    "meta.n_samples=2",
    "meta.outer_pairs=4",
    "meta.domains_per_step=2",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Config, tiny policy dir, per-domain pairs and held-out pairs."""
    from ray_rlhf.loops.common import prepare_base_model
    from ray_rlhf.loops.meta_rm import load_domains

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, [f"run.output_dir={out}", "run.name=meta_unit", *OVERRIDES])
    run_dir = cfg.run.run_dir
    run_dir.mkdir(parents=True)
    policy_dir = prepare_base_model(cfg, run_dir)
    domains, held_out = load_domains(cfg, run_dir, policy_dir)
    return cfg, policy_dir, domains, held_out


@pytest.fixture(scope="module")
def policy(world):
    from ray_rlhf.models.builders import load_policy, load_tokenizer

    _, policy_dir, _, _ = world
    model = load_policy(policy_dir).eval().requires_grad_(False)
    return model, load_tokenizer(policy_dir)


def test_last_layers_are_the_last_block_norm_and_head(policy) -> None:
    model, _ = policy
    names = adapted_parameter_names(model, "last_layers", 1)
    assert names[0].startswith("model.layers.1.")
    assert names[-2:] == ["model.norm.weight", "lm_head.weight"]
    assert not any(n.startswith("model.layers.0.") for n in names)
    two = adapted_parameter_names(model, "last_layers", 2)
    assert two[0].startswith("model.layers.0.") and "model.embed_tokens.weight" not in two
    assert adapted_parameter_names(model, "full", 1) == [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match="adapt_layers=3, but the model has 2 layers"):
        adapted_parameter_names(model, "last_layers", 3)


def test_sampled_rows_are_grouped_right_padded_and_reproducible(policy) -> None:
    model, tok = policy
    prompts = [tok("sort 3 1 =")["input_ids"], tok("rev 2 =")["input_ids"]]
    kwargs = dict(n_samples=3, max_tokens=5, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)

    def sample(seed: int):
        gen = torch.Generator().manual_seed(seed)
        return sample_responses(model, {}, prompts, temperature=1.0, generator=gen, **kwargs)

    rows = sample(0)
    assert rows["input_ids"].shape[0] == 6 and rows["finished"].shape == (6,)
    for i in range(6):
        prompt = prompts[i // 3]
        real = rows["attention_mask"][i]
        assert rows["input_ids"][i, : len(prompt)].tolist() == prompt
        assert not rows["response_mask"][i, : len(prompt)].any()
        n_resp = int(rows["response_mask"][i].sum())
        assert 1 <= n_resp <= 5 and int(real.sum()) == len(prompt) + n_resp
        assert real[: len(prompt) + n_resp].all()  # right padded
        if rows["finished"][i]:
            assert rows["input_ids"][i, len(prompt) + n_resp - 1] == tok.eos_token_id
    assert torch.equal(sample(0)["input_ids"], rows["input_ids"])


def test_sequence_logprobs_with_substituted_parameters_match_a_plain_forward(policy) -> None:
    from ray_rlhf.algo.tokens import token_logprobs

    model, tok = policy
    gen = torch.Generator().manual_seed(1)
    rows = sample_responses(
        model, {}, [tok("copy 4 5 =")["input_ids"]], n_samples=2, max_tokens=4,
        eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, temperature=1.0, generator=gen,
    )  # fmt: skip
    own = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        logits = model(
            input_ids=rows["input_ids"], attention_mask=rows["attention_mask"].long()
        ).logits
    direct = (token_logprobs(logits, rows["input_ids"]) * rows["response_mask"]).sum(-1)
    assert_close(sequence_logprobs(model, {}, rows), direct, atol=1e-5, rtol=1e-5)
    assert_close(sequence_logprobs(model, own, rows), direct, atol=1e-5, rtol=1e-5)
    shifted = {"lm_head.weight": own["lm_head.weight"] + 0.5}
    moved = policy_logits(model, shifted, rows["input_ids"], rows["attention_mask"])
    assert not torch.allclose(moved, logits)
    assert torch.equal(model.lm_head.weight, own["lm_head.weight"])  # the module is untouched


def test_domain_batches_are_deterministic_and_split_inner_from_outer(world) -> None:
    from ray_rlhf.learner.meta_rm import domain_batches

    cfg, _, domains, _ = world
    assert sorted(domains) == ["copy", "rev", "sort"]
    first = domain_batches(domains, cfg.meta, 3, seed=0)
    again = domain_batches(domains, cfg.meta, 3, seed=0)
    assert [b.domain for b in first] == sorted(b.domain for b in first)
    assert len({b.domain for b in first}) == 2
    for a, b in zip(first, again, strict=True):
        assert a.domain == b.domain and a.prompts == b.prompts and a.seed == b.seed
        assert torch.equal(a.pairs["chosen_input_ids"], b.pairs["chosen_input_ids"])
        assert len(a.prompts) == 2 and a.pairs["chosen_input_ids"].shape[0] == 4
    picks = {tuple(b.domain for b in domain_batches(domains, cfg.meta, s, 0)) for s in range(8)}
    assert len(picks) > 1  # the domains vary between steps


def _adapter(world, **changes):
    from ray_rlhf.learner.meta_rm import DomainAdapter

    cfg, policy_dir, _, _ = world
    meta = MetaConfig(**{**vars(cfg.meta), **changes})
    return DomainAdapter(policy_dir, policy_dir, meta, cfg.data.max_response_tokens)


def test_one_inner_step_first_order_equals_full_unroll_on_the_tiny_model(world) -> None:
    from ray_rlhf.learner.meta_rm import MetaRMLearner, domain_batches

    cfg, policy_dir, domains, _ = world
    batch = domain_batches(domains, cfg.meta, 0, seed=0)[0]
    weights = MetaRMLearner(policy_dir, cfg.meta).weights()
    first = _adapter(world, order="first", inner_steps=1).meta_gradient(weights, batch)
    full = _adapter(world, order="full", inner_steps=1).meta_gradient(weights, batch)
    assert first.grads.keys() == weights.keys()
    for name, grad in first.grads.items():
        assert_close(grad, full.grads[name], atol=1e-6, rtol=1e-4)
    assert first.grads["score.weight"].abs().sum() > 0
    assert first.grads["model.layers.0.mlp.up_proj.weight"].abs().sum() > 0  # backbone too
    assert first.metrics == pytest.approx(full.metrics | {"seconds": first.metrics["seconds"]})
    assert first.metrics["kl"] > 0


def test_saved_state_resumes_to_identical_updates(world, tmp_path) -> None:
    from ray_rlhf.learner.meta_rm import MetaRMLearner, domain_batches

    cfg, policy_dir, domains, held_out = world
    adapter = _adapter(world)
    learner = MetaRMLearner(policy_dir, cfg.meta)
    start = learner.weights()
    learner.outer_step(adapter, domain_batches(domains, cfg.meta, 0, 0))
    learner.save(tmp_path / "state")
    resumed = MetaRMLearner(policy_dir, cfg.meta, seed=123)  # another head: restore overwrites
    assert resumed.restore(tmp_path / "state") and resumed.step == 1
    assert not MetaRMLearner(policy_dir, cfg.meta).restore(tmp_path / "absent")
    batches = domain_batches(domains, cfg.meta, 1, 0)
    metrics = learner.outer_step(adapter, batches)
    again = resumed.outer_step(adapter, batches)
    untimed = {k: v for k, v in metrics.items() if "seconds" not in k}
    assert untimed == pytest.approx({k: again[k] for k in untimed}, abs=1e-6, rel=1e-5)
    for name, value in learner.weights().items():
        assert_close(resumed.weights()[name], value)
    assert any(not torch.equal(start[n], v) for n, v in learner.weights().items())
    assert {"meta/outer_loss", "meta/inner_reward", "meta/kl", "meta/grad_norm"} <= set(metrics)
    assert {f"meta/outer_loss/{b.domain}" for b in batches} <= set(metrics)
    ev = learner.evaluate(held_out)
    assert 0 <= ev["eval/accuracy"] <= 1 and ev["eval/score_std"] > 0


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("meta.inner_steps=0", r"meta\.inner_steps: must be >= 1"),
        ("meta.beta=0", r"meta\.beta: must be > 0"),
        ("meta.order=second", r"meta\.order: must be one of \['first', 'full'\]"),
        ("meta.adapt=lora", r"meta\.adapt: must be one of \['last_layers', 'full'\]"),
        ("meta.domains_per_step=7", r"meta\.domains_per_step: must be <= the toy world's 6"),
        ("meta.inner_lr=-1", r"meta\.inner_lr: must be > 0"),
    ],
)
def test_meta_config_errors_name_the_key(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        load_config(None, [override])


def test_cli_has_the_meta_rm_command() -> None:
    from ray_rlhf.cli import parse_config

    command, cfg = parse_config(["meta-rm", "meta.order=full", "meta.inner_steps=3"])
    assert command == "meta-rm" and cfg.run.name == "meta_rm"
    assert (cfg.meta.order, cfg.meta.inner_steps) == ("full", 3)
