"""`full_state_dict` below ZeRO-3 hands out the module's own tensors (no copy of the model),
tied weights stay one tensor, and `_param_norm` matches a float64 reference without a float64
copy of each tensor."""

from __future__ import annotations

import pytest
import torch

from ray_rlhf.learner.engine import cpu_state


def _tiny_tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    return LlamaForCausalLM(cfg)


def test_cpu_state_views_or_copies_and_keeps_ties():
    model = _tiny_tied_llama()
    state = model.state_dict()
    params = dict(model.named_parameters())
    embed = params["model.embed_tokens.weight"]
    views = cpu_state(state, copy=False)
    assert views["lm_head.weight"] is views["model.embed_tokens.weight"]
    assert views["model.embed_tokens.weight"].data_ptr() == embed.data_ptr()
    assert not views["model.embed_tokens.weight"].requires_grad
    copies = cpu_state(state, copy=True)
    assert copies["lm_head.weight"] is copies["model.embed_tokens.weight"]  # cloned once
    assert all(copies[k].data_ptr() != v.data_ptr() for k, v in state.items())
    before = embed.detach().clone()
    with torch.no_grad():
        embed.add_(1.0)
    assert torch.equal(views["lm_head.weight"], embed)  # live
    assert torch.equal(copies["lm_head.weight"], before)  # frozen at the call


def test_full_state_dict_at_zero0_is_the_modules_own_tensors():
    from ray_rlhf.config import LearnerConfig
    from ray_rlhf.learner.engine import full_state_dict, init_engine
    from ray_rlhf.loops.rm_local import ensure_process_group

    ensure_process_group()
    engine = init_engine(
        _tiny_tied_llama(), LearnerConfig(num_workers=1, zero_stage=0), lr=1e-3,
        weight_decay=0.0, total_steps=1, warmup_steps=0, micro_batch_per_worker=1,
    )  # fmt: skip
    state = full_state_dict(engine)
    params = dict(engine.module.named_parameters())
    assert set(params) < set(state) and "lm_head.weight" in state
    for name, p in params.items():
        assert state[name].data_ptr() == p.data_ptr(), name  # no copy
    assert state["lm_head.weight"] is state["model.embed_tokens.weight"]


def test_param_norm_matches_float64_over_every_entry(monkeypatch):
    from ray_rlhf.distributed import ppo_trainer

    g = torch.Generator().manual_seed(0)
    embed = torch.randn(300, 7, generator=g)
    state = {
        "embed": embed,
        "lm_head": embed,  # tied: counted under both names, as before
        "big": 1000.0 + torch.randn(5000, generator=g),
        "half": torch.randn(40, generator=g).to(torch.bfloat16),
        "scalar": torch.tensor(3.0),
    }
    old = float(torch.sqrt(sum((t.double() ** 2).sum() for t in state.values())))
    assert ppo_trainer._param_norm(state) == pytest.approx(old, rel=1e-12)
    monkeypatch.setattr(ppo_trainer, "_NORM_CHUNK", 64)  # many chunks per tensor
    assert ppo_trainer._param_norm(state) == pytest.approx(old, rel=1e-12)
    assert ppo_trainer._param_norm({"x": torch.tensor([3.0, 4.0])}) == 5.0
