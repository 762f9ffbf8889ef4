"""Unit tests for ray_rlhf.models: tokenizer, tiny Llama factory, builders, checkpoint I/O."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import safe_open
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

from ray_rlhf.models import (
    HEAD_CONFIG_KEY,
    METADATA_FILE,
    SPECIAL_TOKENS,
    ModelDirError,
    TinyModelSpec,
    build_word_tokenizer,
    last_token_values,
    load_critic,
    load_json,
    load_policy,
    load_reward_model,
    load_tensors,
    load_tokenizer,
    save_hf_model,
    save_json_atomic,
    save_tensors,
    score_positions,
    tiny_llama_config,
    validate_model_dir,
    write_tiny_model,
)

WORDS = ["sort", "rev", "=", "1", "2", "3"]
# Ids: <pad>=0 <s>=1 </s>=2 <unk>=3, then WORDS from 4.
SORT, EQ, ONE, TWO, THREE = 4, 6, 7, 8, 9


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("policy") / "model", tokenizer, TinyModelSpec())


@pytest.fixture(scope="module")
def batch(tokenizer) -> dict[str, torch.Tensor]:
    """Two right-padded rows: (2, 6) ids and mask."""
    enc = tokenizer(["sort 3 1 2 =", "rev 1 ="], padding=True, return_tensors="pt")
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _no_temp_siblings(path: Path) -> bool:
    return not any(p.name.startswith(f".{path.name}.") for p in path.parent.iterdir())


# --- tokenizer ---------------------------------------------------------------------------


def test_tokenizer_encodes_words_with_bos(tokenizer) -> None:
    assert tokenizer("sort 3 1 2 =").input_ids == [1, SORT, THREE, ONE, TWO, EQ]
    assert tokenizer("sort 3", add_special_tokens=False).input_ids == [SORT, THREE]
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == list(SPECIAL_TOKENS.values())
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id) == (0, 1)
    assert (tokenizer.eos_token_id, tokenizer.unk_token_id) == (2, 3)
    assert len(tokenizer) == 4 + len(WORDS)


def test_tokenizer_unknown_word_is_unk(tokenizer) -> None:
    assert tokenizer("sort banana 1").input_ids == [1, SORT, 3, ONE]


def test_tokenizer_decodes_with_single_spaces(tokenizer) -> None:
    ids = [1, SORT, THREE, ONE, TWO, EQ, ONE, TWO, THREE, 2]
    assert tokenizer.decode(ids) == "<s> sort 3 1 2 = 1 2 3 </s>"
    assert tokenizer.decode([ONE, TWO, THREE, 2, 0], skip_special_tokens=True) == "1 2 3"


def test_tokenizer_without_bos_and_left_padding() -> None:
    tok = build_word_tokenizer(WORDS, add_bos=False, padding_side="left")
    enc = tok(["1 2", "1"], padding=True)
    assert enc.input_ids == [[ONE, TWO], [0, ONE]]
    assert enc.attention_mask == [[1, 1], [0, 1]]


def test_tokenizer_save_reload_gives_identical_ids(tokenizer, tmp_path: Path) -> None:
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = ["sort 3 1 2 = 1 2 3 </s>", "rev banana ="]
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.decode([ONE, TWO, 2], skip_special_tokens=True) == "1 2"
    assert reloaded.chat_template == tokenizer.chat_template
    assert reloaded.padding_side == tokenizer.padding_side


def test_chat_template_renders_as_documented(tokenizer) -> None:
    user = {"role": "user", "content": "sort 3 1 2 ="}
    assistant = {"role": "assistant", "content": "1 2 3"}
    render = tokenizer.apply_chat_template
    assert render([user], tokenize=False, add_generation_prompt=True) == "sort 3 1 2 ="
    assert render([user, assistant], tokenize=False) == "sort 3 1 2 = 1 2 3 </s>"
    text = render([user, assistant], tokenize=False)
    assert tokenizer(text).input_ids == [1, SORT, THREE, ONE, TWO, EQ, ONE, TWO, THREE, 2]


@pytest.mark.parametrize("words", [["a b"], [""], ["<s>"], ["##x"], ["a", "a"]])
def test_tokenizer_rejects_bad_words(words: list[str]) -> None:
    with pytest.raises(ValueError, match="word"):
        build_word_tokenizer(words)


# --- factory -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_heads": 3}, "num_heads"),
        ({"hidden_size": 32, "num_heads": 2}, "hidden_size"),
        ({"hidden_size": 48, "num_heads": 1}, "vLLM"),
        ({"num_layers": 0}, "num_layers"),
        ({"intermediate_size": -1}, "intermediate_size"),
        ({"max_position_embeddings": 1.5}, "max_position_embeddings"),
        ({"seed": -1}, "seed"),
    ],
)
def test_tiny_model_spec_errors_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TinyModelSpec(**kwargs)


def test_tiny_llama_config_takes_vocab_and_ids_from_tokenizer(tokenizer) -> None:
    config = tiny_llama_config(TinyModelSpec(hidden_size=128, num_heads=2), tokenizer)
    assert config.vocab_size == len(tokenizer)
    assert (config.pad_token_id, config.bos_token_id, config.eos_token_id) == (0, 1, 2)
    assert config.head_dim == 64


def test_write_tiny_model_is_deterministic_and_loads(tokenizer, tmp_path: Path) -> None:
    first = write_tiny_model(tmp_path / "a", tokenizer, TinyModelSpec(seed=3))
    second = write_tiny_model(tmp_path / "b", tokenizer, TinyModelSpec(seed=3))
    other = write_tiny_model(tmp_path / "c", tokenizer, TinyModelSpec(seed=4))
    weights = [load_tensors(d / "model.safetensors") for d in (first, second, other)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not torch.equal(
        weights[0]["model.embed_tokens.weight"], weights[2]["model.embed_tokens.weight"]
    )

    model = AutoModelForCausalLM.from_pretrained(first)
    tok = AutoTokenizer.from_pretrained(first)
    ids = tok("sort 3 1 2 =", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, 6, len(tokenizer))
    gen = load_json(first / "generation_config.json")
    assert (gen["eos_token_id"], gen["pad_token_id"], gen["bos_token_id"]) == (2, 0, 1)


def test_write_tiny_model_replaces_existing_dir(tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "model"
    write_tiny_model(out, tokenizer, TinyModelSpec(seed=1))
    (out / "stale.txt").write_text("old")
    write_tiny_model(out, tokenizer, TinyModelSpec(seed=2))
    assert not (out / "stale.txt").exists()
    assert _no_temp_siblings(out)


def test_failed_save_leaves_no_out_dir(tokenizer, tmp_path: Path, monkeypatch) -> None:
    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", broken_save)
    out = tmp_path / "model"
    with pytest.raises(OSError, match="disk full"):
        write_tiny_model(out, tokenizer, TinyModelSpec())
    assert not out.exists()
    assert _no_temp_siblings(out)


# --- builders ----------------------------------------------------------------------------


def test_load_policy_and_tokenizer(policy_dir: Path, tokenizer) -> None:
    policy = load_policy(policy_dir)
    assert type(policy).__name__ == "LlamaForCausalLM"
    assert load_tokenizer(policy_dir)("sort 1 =").input_ids == tokenizer("sort 1 =").input_ids


@pytest.mark.parametrize("builder", [load_critic, load_reward_model])
def test_value_model_shares_policy_backbone(policy_dir: Path, batch, builder) -> None:
    policy = _state(load_policy(policy_dir))
    model = builder(policy_dir)
    assert type(model).__name__ == "LlamaForTokenClassification"
    for name, tensor in model.model.state_dict().items():
        assert torch.equal(tensor, policy[f"model.{name}"]), name
    assert model.score.weight.shape == (1, 64)
    assert model.score.weight.std() < 0.05
    assert torch.count_nonzero(model.score.bias) == 0
    values = score_positions(model, **batch)
    assert values.shape == batch["input_ids"].shape  # (B, T)


def test_value_head_is_seeded(policy_dir: Path) -> None:
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    a, b = load_critic(policy_dir, seed=7), load_critic(policy_dir, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(a.score.weight, b.score.weight)
    assert not torch.equal(a.score.weight, load_critic(policy_dir, seed=8).score.weight)


def test_values_deterministic_in_train_mode(policy_dir: Path, batch) -> None:
    critic = load_critic(policy_dir).train()
    assert torch.equal(score_positions(critic, **batch), score_positions(critic, **batch))


@pytest.mark.parametrize("head", ["scalar", "per_position"])
def test_reward_model_round_trip(policy_dir: Path, tokenizer, batch, tmp_path, head) -> None:
    rm = load_reward_model(policy_dir, head=head)
    assert getattr(rm.config, HEAD_CONFIG_KEY) == head
    with torch.no_grad():
        before = score_positions(rm, **batch)
    out = save_hf_model(rm, tokenizer, tmp_path / "rm", metadata={"step": 3})
    assert load_json(out / METADATA_FILE) == {"step": 3}
    assert load_json(out / "config.json")[HEAD_CONFIG_KEY] == head
    plain = AutoModelForTokenClassification.from_pretrained(out)
    ours = load_reward_model(out, head=head)
    with torch.no_grad():
        assert torch.equal(score_positions(plain, **batch), before)
        assert torch.equal(score_positions(ours, **batch), before)
    other = "scalar" if head == "per_position" else "per_position"
    with pytest.raises(ModelDirError, match=str(out)):
        load_reward_model(out, head=other)


def test_critic_round_trip_and_policy_refuses_value_dir(policy_dir: Path, batch, tmp_path) -> None:
    critic = load_critic(policy_dir)
    out = save_hf_model(critic, None, tmp_path / "critic")
    with torch.no_grad():
        assert torch.equal(
            score_positions(load_critic(out), **batch), score_positions(critic, **batch)
        )
    with pytest.raises(ModelDirError, match="not a causal LM"):
        load_policy(out)


def test_builders_refuse_non_causal_architecture(policy_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "encoder"
    out.mkdir()
    config = load_json(policy_dir / "config.json")
    config["architectures"] = ["LlamaModel"]
    save_json_atomic(out / "config.json", config)
    save_tensors(out / "model.safetensors", {"x": torch.zeros(1)})
    for builder in (load_policy, load_critic, load_reward_model):
        with pytest.raises(ModelDirError, match=str(out)):
            builder(out)


def test_reward_model_rejects_unknown_head(policy_dir: Path) -> None:
    with pytest.raises(ValueError, match="head"):
        load_reward_model(policy_dir, head="pairwise")  # type: ignore[arg-type]


def test_left_padding_gives_same_values_as_no_padding(policy_dir: Path, tokenizer) -> None:
    critic = load_critic(policy_dir)
    ids = torch.tensor([tokenizer("rev 1 =").input_ids])  # (1, 4)
    padded = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], dim=1)  # (1, 6)
    mask = (padded != 0).long()
    with torch.no_grad():
        plain = score_positions(critic, ids, torch.ones_like(ids))
        left = score_positions(critic, padded, mask)
    torch.testing.assert_close(left[:, 2:], plain, atol=1e-5, rtol=0)


def test_last_token_values_handles_left_and_right_padding() -> None:
    values = torch.arange(12, dtype=torch.float32).view(3, 4)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 1, 1, 1]])
    assert last_token_values(values, mask).tolist() == [1.0, 7.0, 11.0]
    with pytest.raises(ValueError, match="at least one"):
        last_token_values(values, torch.zeros(3, 4))


# --- checkpoint --------------------------------------------------------------------------


def test_validate_model_dir_errors(policy_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        validate_model_dir(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelDirError, match=f"{empty}.*config.json"):
        validate_model_dir(empty)
    (empty / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="unreadable"):
        validate_model_dir(empty)
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="no weight files"):
        validate_model_dir(empty)
    (empty / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelDirError, match="pickle"):
        validate_model_dir(empty)
    with pytest.raises(ModelDirError, match="pickle"):
        load_policy(empty)
    assert validate_model_dir(policy_dir) == policy_dir.resolve()


def _with_length(header: bytes) -> bytes:
    """A safetensors-like file: the 8-byte little-endian length, then `header`, no data."""
    return len(header).to_bytes(8, "little") + header


# The real file is 8 + header + 48 tensor bytes; each case damages it as a bad download or
# copy would (truncated, a server's error page, a header that is not the format's).
_DAMAGED = {
    "truncated": (lambda whole: whole[:-10], "indexes 48 bytes of tensor data, the file holds 38"),
    "header cut": (lambda whole: whole[:40], r"a header length of \d+ bytes, but the file has 40"),
    "8 bytes short": (lambda whole: whole[:5], "5 bytes, too short for the 8-byte header length"),
    "trailing bytes": (lambda whole: whole + bytes(4), "4 bytes after the last tensor"),
    "garbage": (lambda whole: b"<html>Not Found</html>" * 20, "a header length of"),
    "not json": (lambda whole: _with_length(b"\xff{oops"), "the header is not JSON"),
    "not an object": (lambda whole: _with_length(b"[1, 2]"), "the header is not a JSON object"),
    "no offsets": (
        lambda whole: _with_length(b'{"w": {"dtype": "F32"}}'),
        "tensor 'w' has no valid data_offsets",
    ),
}


@pytest.mark.parametrize(("damage", "problem"), list(_DAMAGED.values()), ids=list(_DAMAGED))
def test_validate_model_dir_refuses_damaged_safetensors(tmp_path: Path, damage, problem) -> None:
    from safetensors.torch import save_file

    model = tmp_path / "model"
    model.mkdir()
    model = model.resolve()  # as validate_model_dir names it
    (model / "config.json").write_text("{}")
    weights = model / "model-00002-of-00002.safetensors"
    save_file({"w": torch.randn(2, 4), "b": torch.zeros(4)}, str(weights))
    save_file({"x": torch.zeros(1)}, str(model / "model-00001-of-00002.safetensors"))
    assert validate_model_dir(model) == model.resolve()  # whole files pass
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(ModelDirError) as caught:
        validate_model_dir(model)
    message = str(caught.value)
    assert message.startswith(
        f"model dir {model}: weight file {weights.name} is truncated or corrupt: "
    )
    assert re.search(problem, message)
    assert caught.value.hint.startswith(f"Replace {weights}: download the model again")
    with pytest.raises(Exception):  # noqa: B017 - safetensors itself refuses every case
        safe_open(str(weights), framework="pt")


def test_tensors_round_trip_with_shared_storage(tmp_path: Path) -> None:
    base = torch.randn(4, 3)
    tensors = {"a": base, "tied": base, "view": base.t(), "ints": torch.arange(5)}
    path = tmp_path / "w.safetensors"
    save_tensors(path, tensors, metadata={"step": "7"})
    loaded = load_tensors(path)
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"step": "7"}
    assert _no_temp_siblings(path)


def test_json_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    save_json_atomic(path, {"step": 1, "loss": [0.5]})
    save_json_atomic(path, {"step": 2})
    assert load_json(path) == {"step": 2}
    assert json.loads(path.read_text()) == {"step": 2}
    assert _no_temp_siblings(path)
