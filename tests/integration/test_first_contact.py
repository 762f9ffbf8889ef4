"""First contact with a user's own model and data: a tiny Llama whose tokenizer has a chat
template with a system turn, chat prompts of 60+ tokens after templating, a rule reward from
a file. Bad input fails before Ray starts; a rule that raises fails the run once, without a
Ray Train retry; good input trains with the default (derived) token limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ray_rlhf.config import load_config
from ray_rlhf.metrics import read_metrics

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHAT_TEMPLATE = (
    "{%- for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor -%}"
    "{%- if add_generation_prompt %}<|assistant|>{% endif -%}"
)
WORDS = ["<|system|>", "<|user|>", "<|assistant|>", "you", "are", "a", "helpful", "bot"]
WORDS += ["sort", "the", "list", "please", "1", "2", "3", "="]
SYSTEM = " ".join(["you are a helpful bot"] * 6)  # 30 tokens, like a real model's preamble
_OVERRIDES = [
    "learner.num_workers=1",
    "learner.zero_stage=0",
    "rollout.num_actors=1",
    "rollout.kv_cache_mib=16",
    "reward.num_actors=1",
    "ppo.prompts_per_iteration=8",
    "ppo.minibatch_size=16",
    "ppo.micro_batch_size=8",
    "ppo.iterations=2",
]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    """Tiny Llama (128 positions) with a system-turn chat template."""
    from ray_rlhf.models.factory import TinyModelSpec, write_tiny_model
    from ray_rlhf.models.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(WORDS, chat_template=CHAT_TEMPLATE)
    out = tmp_path_factory.mktemp("chat") / "model"
    return write_tiny_model(out, tokenizer, TinyModelSpec())


@pytest.fixture(scope="module")
def chat_prompts(tmp_path_factory) -> Path:
    """40 chat prompts of 30 system + 32 user + 3 role-marker tokens after templating."""
    rows = []
    for i in range(40):
        user = " ".join(["sort the list please", "1 2 3 ="][i % 2] for _ in range(8))
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
        rows.append({"id": f"p{i}", "messages": messages})
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _rule(path: Path, body: str) -> str:
    """A `file.py:reward` rule spec whose function body is `body`."""
    path.write_text(f"def reward(prompt, response):\n{body}\n")
    return f"{path}:reward"


def _ppo_cli_user_error(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`ray-rlhf ppo argv` in a subprocess, checked to end as a user error: exit code 2 and
    no traceback on stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "ray_rlhf.cli", "ppo", *argv],
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)} | (env or {}),
        cwd=cwd,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_a_bad_data_file_fails_before_ray_with_one_paragraph(tmp_path, chat_model):
    bad = tmp_path / "prompts.jsonl"
    ok = {"messages": [{"role": "user", "content": "sort the list please"}]}
    ends_with_answer = {"messages": [ok["messages"][0], {"role": "assistant", "content": "1"}]}
    bad.write_text(json.dumps(ok) + "\n" + json.dumps(ends_with_answer) + "\n")
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    argv = [f"run.output_dir={tmp_path}", f"model.path={chat_model}", f"data.prompts_path={bad}"]
    env = {"RAY_RLHF_RAY_TMP": str(ray_tmp), "RAY_RLHF_CACHE": str(tmp_path / "cache")}
    proc = _ppo_cli_user_error(argv, tmp_path, env)
    what, how, where = proc.stderr.strip().splitlines()[-3:]
    assert what == (
        f"ray-rlhf ppo: data error: {bad} row 1, field 'messages': prompt must end with a "
        "user message, not 'assistant'"
    )
    assert how.startswith("Fix or drop the rows named above")
    log = tmp_path / "ppo" / "logs" / "driver.log"
    assert where == f"Full traceback: {log}"
    assert "Traceback (most recent call last)" in log.read_text()
    assert list(ray_tmp.iterdir()) == []  # Ray never started: no session dir


def test_a_minibatch_that_does_not_divide_the_iteration_is_refused(
    tmp_path, chat_model, chat_prompts
):
    """8 prompts x 4 samples = 32 rows and ppo.minibatch_size=24: the last step would
    accumulate into the next iteration (or drop 8 rows). Refused before Ray starts, with the
    key and a value that fits."""
    ray_tmp = tmp_path / "ray"
    ray_tmp.mkdir()
    env = os.environ | {"PYTHONPATH": str(ROOT), "RAY_RLHF_RAY_TMP": str(ray_tmp)}
    argv = [
        f"run.output_dir={tmp_path}",
        f"model.path={chat_model}",
        f"data.prompts_path={chat_prompts}",
        *_OVERRIDES,
        "ppo.minibatch_size=24",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "ray_rlhf.cli", "ppo", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(
        "ray-rlhf ppo: config error: ppo.minibatch_size: 24 does not divide the "
        "ppo.prompts_per_iteration x rollout.n_samples = 8 x 4 = 32 samples of an iteration"
    ), proc.stderr
    assert "set ppo.minibatch_size=16" in proc.stderr
    assert list(ray_tmp.iterdir()) == []  # Ray never started


def test_a_rule_that_raises_fails_the_run_once_without_a_retry(tmp_path, chat_model, chat_prompts):
    """`ray-rlhf ppo` with a rule that raises: the worker's error is classified as the
    user's, the run stops without a Ray Train retry (`learner.max_failures=1` is not used),
    and the console gets one paragraph and exit code 2, the traceback only the log."""
    calls = tmp_path / "calls.txt"
    body = f"    open({str(calls)!r}, 'a').write('call\\n')\n    return 1 / 0"
    argv = [
        f"run.output_dir={tmp_path}",
        f"model.path={chat_model}",
        f"data.prompts_path={chat_prompts}",
        f"reward.rule={_rule(tmp_path / 'rule.py', body)}",
        "learner.max_failures=1",
        *_OVERRIDES,
    ]
    proc = _ppo_cli_user_error(argv, tmp_path)
    [what] = [line for line in proc.stderr.splitlines() if line.startswith("ray-rlhf ppo: ")]
    assert what.startswith("ray-rlhf ppo: reward error: ")
    assert "raised ZeroDivisionError: division by zero" in what
    log = (tmp_path / "ppo" / "logs" / "driver.log").read_text()
    assert "Traceback (most recent call last)" in log and "ZeroDivisionError" in log
    # The first scored row raised; a Ray Train retry would have scored a second time.
    assert calls.read_text() == "call\n"
    assert not (tmp_path / "ppo" / "DONE.json").exists()


def test_chat_prompts_train_with_default_token_limits(
    tmp_path, chat_model, chat_prompts, ray_session
):
    from ray_rlhf.loops import ppo

    body = "    return len(response.split()) / 10"
    cfg = load_config(
        None,
        [
            f"run.output_dir={tmp_path}",
            f"model.path={chat_model}",
            f"data.prompts_path={chat_prompts}",
            f"reward.rule={_rule(tmp_path / 'rule.py', body)}",
            *_OVERRIDES,
        ],
    )
    assert cfg.data.max_prompt_tokens is None and cfg.data.max_response_tokens is None
    result = ppo.run_job(cfg)
    data = yaml.safe_load((cfg.run.run_dir / "config.yaml").read_text())["data"]
    assert data["max_prompt_tokens"] == 65  # 3 role markers + 30 system + 32 user tokens
    assert data["max_response_tokens"] == 128 - 2 - 65  # capped by max_position_embeddings
    rows = read_metrics(result.metrics_dir)
    assert [r["step"] for r in rows] == [1, 2]
    # It trains: 8 prompts x 4 samples = 32 rows, 2 optimizer steps of 16 per iteration, and
    # iteration 1's steps moved the policy away from the reference that iteration 1 sampled.
    assert [r["train/optimizer_steps"] for r in rows] == [2.0, 2.0]
    assert [r["train/rows"] for r in rows] == [32.0, 32.0]
    assert abs(rows[0]["train/kl"]) < 1e-4
    assert abs(rows[1]["train/kl"]) > 10 * max(abs(rows[0]["train/kl"]), 1e-5)
    assert rows[-1]["rollout/response_length"] > 0
    assert "eval/sampled/reward" in rows[-1]  # on the 2 prompts held out of the 40
    log = (cfg.run.run_dir / "logs" / "driver.log").read_text()
    assert "token limits: prompt 65 (longest prompt in the data)" in log
    assert "holding out 2 of the 40 prompts" in log
    assert (cfg.run.run_dir / "DONE.json").exists()

    # Rerun as unfinished (a run killed after its last checkpoint leaves no DONE.json) with
    # a model with a narrower MLP and the same tokenizer, the config change allowed: the checkpoint
    # cannot load into it. That is the user's error, reported once without a retry.
    from transformers import AutoTokenizer

    from ray_rlhf.models.factory import TinyModelSpec, write_tiny_model

    narrow = write_tiny_model(
        tmp_path / "narrow",
        AutoTokenizer.from_pretrained(chat_model),
        TinyModelSpec(intermediate_size=128),
    )
    (cfg.run.run_dir / "DONE.json").unlink()
    argv = [
        f"run.output_dir={tmp_path}",
        f"run.name={cfg.run.name}",
        f"model.path={narrow}",
        f"data.prompts_path={chat_prompts}",
        f"reward.rule={tmp_path / 'rule.py'}:reward",
        "run.allow_config_change=true",
        "learner.max_failures=1",
        *_OVERRIDES,
    ]
    proc = _ppo_cli_user_error(argv, tmp_path)
    [what] = [line for line in proc.stderr.splitlines() if line.startswith("ray-rlhf ppo: ")]
    checkpoints = cfg.run.run_dir / "ray_train"
    assert what.startswith(
        f"ray-rlhf ppo: checkpoint error: the latest checkpoint of this run ({checkpoints}"
    ), what
    assert "does not fit the PPOLearner of this config: RuntimeError: Error(s) in loading " in what
    assert "size mismatch for model.layers.0.mlp.gate_proj.weight" in what
    assert "(and 5 more)" in what  # up, down and the second layer's three
    # One worker group met the error: a Ray Train retry would start a second one.
    worker_logs = (cfg.run.run_dir / "logs" / "ray" / "train").glob("ray-train-app-worker-*")
    assert sum("does not fit" in path.read_text() for path in worker_logs) == 1
    assert not (cfg.run.run_dir / "DONE.json").exists()
