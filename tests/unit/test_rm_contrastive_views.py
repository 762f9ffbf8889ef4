"""The contrastive RM term's dropout views, in-process on the tiny Llama (world size 1):
`forced_dropout` sets and restores the model's dropout, `views: forwards` gives two views
that differ inside the network while the BT rows keep the model's own (zero) dropout, the
`differences` target against a hand computation, and `shared` == `forwards` at dropout 0."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from ray_rlhf.config import load_config
from ray_rlhf.config_rewards import RMContrastiveConfig
from ray_rlhf.learner.rm_representation import contrastive_term, forced_dropout

PAIRS = [  # (prompt, chosen, rejected); the rows differ in length, so padding is exercised
    ("sort 3 1 2 =", "1 2 3", "3 2 1"),
    ("rev 4 5 =", "5 4", "4 5 5"),
    ("copy 7 =", "7", "7 7"),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from ray_rlhf.loops.common import prepare_base_model
    from ray_rlhf.loops.rm_local import ensure_process_group

    ensure_process_group()
    out = tmp_path_factory.mktemp("base")
    return prepare_base_model(load_config(None, [f"run.output_dir={out}"]), out)


@pytest.fixture(scope="module")
def batch(model_dir) -> dict[str, torch.Tensor]:
    """The P = 3 pairs, each side right padded to one width T."""
    from ray_rlhf.models.builders import load_tokenizer

    tok = load_tokenizer(model_dir)
    sides: dict[str, list[tuple[list[int], list[int]]]] = {"chosen": [], "rejected": []}
    for prompt, chosen, rejected in PAIRS:
        ids = tok(prompt)["input_ids"]
        for side, text in (("chosen", chosen), ("rejected", rejected)):
            sides[side].append((ids, tok(text)["input_ids"] + [tok.eos_token_id]))
    width = max(len(p) + len(r) for rows in sides.values() for p, r in rows)
    out = {}
    for side, rows in sides.items():
        ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        real = torch.zeros(len(rows), width, dtype=torch.bool)
        response = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, (p, r) in enumerate(rows):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            real[i, : len(p) + len(r)] = True
            response[i, len(p) : len(p) + len(r)] = True
        out |= {
            f"{side}_input_ids": ids,
            f"{side}_attention_mask": real,
            f"{side}_response_mask": response,
        }
    return out


def _learner(model_dir, tmp_path, *overrides: str):
    from ray_rlhf.learner.rm import RMLearner

    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            "learner.num_workers=1",
            "learner.zero_stage=0",
            f"rm.batch_size={len(PAIRS)}",
            *overrides,
        ],
    )
    learner = RMLearner(
        model_dir, cfg.model, cfg.learner, cfg.rm, micro_batch_per_worker=len(PAIRS), seed=0
    )
    learner.engine.train()
    return learner


def _dropout_state(model: torch.nn.Module) -> list[tuple[str, float | bool]]:
    """Every dropout rate and checkpointing flag `forced_dropout` may change, by module."""
    state: list[tuple[str, float | bool]] = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            state.append((f"{name}.p", module.p))
        for attr in ("attention_dropout", "gradient_checkpointing"):
            if attr in vars(module):
                state.append((f"{name}.{attr}", vars(module)[attr]))
    return state


def test_forced_dropout_sets_every_rate_and_restores_them(model_dir) -> None:
    from ray_rlhf.models.builders import load_reward_model

    model = load_reward_model(model_dir)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    before = _dropout_state(model)
    attention = [m for m in model.modules() if "attention_dropout" in vars(m)]
    assert len(attention) == 2 and all(m.attention_dropout == 0.0 for m in attention)
    assert model.dropout.p == 0.0  # the score head's input dropout (the loader sets it to 0)
    assert any(v is True for k, v in before if k.endswith("gradient_checkpointing"))
    with forced_dropout(model, 0.3):
        inside = dict(_dropout_state(model))
        assert all(m.attention_dropout == 0.3 for m in attention)
        assert model.dropout.p == 0.3
        assert not any(v for k, v in inside.items() if k.endswith("gradient_checkpointing"))
    assert _dropout_state(model) == before
    with pytest.raises(RuntimeError, match="inside"), forced_dropout(model, 0.3):
        raise RuntimeError("inside")
    assert _dropout_state(model) == before


def test_forced_dropout_leaves_models_without_dropout_attributes_alone() -> None:
    plain = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    x = torch.randn(4, 2)
    with forced_dropout(plain.train(), 0.5):
        assert_close(plain(x), plain(x))

    class ModuleValued(torch.nn.Module):  # `attention_dropout` is a Dropout module here
        def __init__(self) -> None:
            super().__init__()
            self.attention_dropout = torch.nn.Dropout(0.1)

    block = ModuleValued()
    with forced_dropout(block, 0.5):
        assert isinstance(block.attention_dropout, torch.nn.Dropout)
        assert block.attention_dropout.p == 0.5
    assert block.attention_dropout.p == 0.1


def test_forward_views_differ_inside_the_network_and_bt_rows_keep_no_dropout(
    model_dir, batch, tmp_path
) -> None:
    from ray_rlhf.learner.rm import stack_pairs

    rows = stack_pairs(batch)  # (2P, T)
    learner = _learner(model_dir, tmp_path, "rm.contrastive.kind=simcse")  # dropout 0.05
    torch.manual_seed(0)
    view_1, view_2 = learner._views(rows)
    assert view_1.shape == view_2.shape == (2 * len(PAIRS), 64)
    assert (view_1 - view_2).abs().amax(dim=-1).min() > 0  # every row's two views differ
    _, unchanged = learner._forward(rows, states=True)  # train mode, the model's own rates
    learner.engine.eval()
    _, reference = learner._forward(rows, states=True)
    assert_close(unchanged, reference)  # dropout is back to 0 after the views
    # Dropout on the pooled state alone would leave each kept element at reference / 0.95;
    # the attention dropout inside the network moves the kept ones too.
    kept = view_1 != 0
    assert not torch.allclose(view_1[kept] * 0.95, reference[kept], atol=1e-4)

    # The BT part of the loss is plain BT's: same scores, same rm/loss and rm/margin.
    plain = _learner(model_dir, tmp_path / "plain")
    learner.engine.train()
    _, metrics = learner._loss(batch)
    _, plain_metrics = plain._loss(batch)
    for key in ("rm/loss", "rm/margin", "rm/accuracy"):
        assert metrics[key] == pytest.approx(plain_metrics[key], abs=1e-6)
    assert metrics["rm/representation_alignment"] < 1.0


def test_forward_views_at_dropout_0_are_the_bt_rows_states(model_dir, batch, tmp_path) -> None:
    from ray_rlhf.learner.rm import stack_pairs

    rows = stack_pairs(batch)
    learner = _learner(
        model_dir, tmp_path, "rm.contrastive.kind=simcse", "rm.contrastive.dropout=0"
    )
    view_1, view_2 = learner._views(rows)
    _, bt = learner._forward(rows, states=True)
    assert_close(view_1, view_2, atol=0, rtol=0)
    assert_close(view_1, bt)


def test_differences_contrast_chosen_minus_rejected_rows_by_hand() -> None:
    cfg = RMContrastiveConfig(kind="simcse", target="differences", tau=0.5, dropout=0.0)
    # P = 2 pairs, H = 2: chosen rows then rejected rows; differences e1 and e2.
    chosen = torch.tensor([[3.0, 1.0], [2.0, 5.0]])
    rejected = torch.tensor([[2.0, 1.0], [2.0, 4.0]])
    pooled = torch.cat([chosen, rejected])  # (2P, H)
    loss, metrics = contrastive_term(cfg, pooled, pooled, None)
    # cos = I, logits = I / 0.5: l_i = -log(e^2 / (e^2 + e^0)) = log(1 + e^-2) for both rows
    assert float(loss) == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    assert metrics["rm/representation_alignment"] == pytest.approx(1.0)
    assert metrics["rm/uniformity"] == pytest.approx(-4.0)  # two orthogonal rows

    # View 2's differences (1, 1) and (0, 1): cos(h1_i, h2_j) = [[1/r2, 0], [1/r2, 1]].
    chosen_2 = torch.tensor([[3.0, 2.0], [2.0, 5.0]])
    loss, metrics = contrastive_term(cfg, pooled, torch.cat([chosen_2, rejected]), None)
    r2 = math.sqrt(2)
    row_0 = math.log(1 + math.exp(-r2))  # logits (2/r2, 0), target 0
    row_1 = math.log(1 + math.exp(r2 - 2))  # logits (2/r2, 2), target 1
    assert float(loss) == pytest.approx((row_0 + row_1) / 2, rel=1e-6)
    assert metrics["rm/representation_alignment"] == pytest.approx((1 / r2 + 1) / 2)

    # On the responses instead, the 2P rows themselves are contrasted: another loss.
    responses, _ = contrastive_term(
        RMContrastiveConfig(kind="simcse", tau=0.5, dropout=0.0), pooled, pooled, None
    )
    assert float(responses) != pytest.approx(math.log(1 + math.exp(-2)), rel=1e-3)


def test_contrastive_term_draws_the_masks_only_for_shared_views() -> None:
    pooled = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    _, shared = contrastive_term(
        RMContrastiveConfig(kind="simcse", views="shared", dropout=0.5), pooled, pooled, None
    )
    _, forwards = contrastive_term(
        RMContrastiveConfig(kind="simcse", views="forwards", dropout=0.5), pooled, pooled, None
    )
    assert shared["rm/representation_alignment"] < 0.99
    assert forwards["rm/representation_alignment"] == pytest.approx(1.0)


def _loss_and_grads(learner, batch) -> tuple[dict[str, float], list[torch.Tensor]]:
    """Metrics of one loss on `batch` and the full gradient of every parameter (any ZeRO
    stage), before the optimizer step: Adam's first step would turn float noise in a
    near-zero gradient into a whole learning-rate step."""
    from deepspeed.utils import safe_get_full_grad

    loss, metrics = learner._loss(batch)
    learner.engine.backward(loss)
    return metrics, [safe_get_full_grad(p).clone() for p in learner.engine.module.parameters()]


@pytest.mark.parametrize(
    ("kind", "target", "zero"),
    [("simcse", "responses", 0), ("swav", "differences", 0), ("simcse", "responses", 2)],
)
def test_shared_and_forwards_agree_at_dropout_0(
    model_dir, batch, tmp_path, kind, target, zero
) -> None:
    common = [
        f"rm.contrastive.kind={kind}",
        f"rm.contrastive.target={target}",
        "rm.contrastive.dropout=0",
        f"learner.zero_stage={zero}",
    ]
    shared = _learner(model_dir, tmp_path / "s", *common, "rm.contrastive.views=shared")
    forwards = _learner(model_dir, tmp_path / "f", *common, "rm.contrastive.views=forwards")
    want, want_grads = _loss_and_grads(shared, batch)
    got, got_grads = _loss_and_grads(forwards, batch)
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert want["rm/contrastive_loss"] > 0
    for grad, reference in zip(got_grads, want_grads, strict=True):  # up to float32 sum order
        assert (grad - reference).norm() <= 1e-4 * reference.norm() + 1e-9
    assert any(g.abs().sum() > 0 for g in got_grads[:-2])  # the backbone gets gradients


def test_gradient_checkpointing_keeps_the_views_gradients(model_dir, batch, tmp_path) -> None:
    common = ["rm.contrastive.kind=simcse", "rm.contrastive.dropout=0.3"]
    grads = []
    for checkpointing in (False, True):
        learner = _learner(
            model_dir,
            tmp_path / str(checkpointing),
            *common,
            f"learner.gradient_checkpointing={str(checkpointing).lower()}",
        )
        torch.manual_seed(0)  # the same dropout masks in both runs
        grads.append(_loss_and_grads(learner, batch)[1])
    for plain, recomputed in zip(*grads, strict=True):
        assert (recomputed - plain).norm() <= 1e-4 * plain.norm() + 1e-9
