"""What a run checks before Ray starts, and the token limits that settles.

`preflight` checks the model dir the stages start from, the reward (PPO), and loads,
tokenizes and validates every data file the stages read; then it resolves
`data.max_prompt_tokens` / `data.max_response_tokens` (`ray_rlhf.data.limits`) and the unset
learning rates (`ray_rlhf.learning_rates`), and for PPO an unset `ppo.micro_batch_size`
(`ray_rlhf.models.memory`). Every
command's `run_job` calls it once, before `init_ray` and before any stage trains (a PPO run
without `model.path` checks the PPO prompts before its SFT stage starts), and hands the
returned config to its stages.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ray_rlhf.config import RLHFConfig, dump_config
from ray_rlhf.config_diff import DERIVED_KEYS
from ray_rlhf.loops.common import (
    CONFIG_FILE,
    check_resume_config,
    prepare_base_model,
    toyworld_files,
)

Stage = Literal["sft", "rm", "ppo"]
"""A stage of a run: each reads its own data (SFT pairs, preference pairs, prompts)."""

logger = logging.getLogger(__name__)


class RunTexts(NamedTuple):
    """Every prompt and every SFT / preference response the stages will read, and how many
    rows of each kind there are (`{"SFT pairs": 20000, ...}`, for the run's header)."""

    prompts: list[str]
    responses: list[str]
    sizes: dict[str, int]


def preflight(
    cfg: RLHFConfig, run_dir: Path, stages: Collection[Stage], *, base_dir: Path | None = None
) -> RLHFConfig:
    """Validates the run's inputs and returns `cfg` with the token limits resolved.

    Args:
        cfg: The run's config (token limits set or None).
        run_dir: The prepared run dir (the toy world's files and tiny model go there).
        stages: The stages this run will execute, in any order.
        base_dir: The model the stages start from; default `prepare_base_model(cfg)`.

    Returns:
        `cfg` with integer `data.max_prompt_tokens` and `data.max_response_tokens`, every
        learning rate and (for PPO) `ppo.micro_batch_size` set; also written to
        `run_dir/config.yaml`.

    Raises:
        DataValidationError: Naming file, row and field of bad or over-long rows.
        ConfigError: Naming the keys of limits the model cannot hold, of `segment.*`
            settings PPO's reward cannot give (a rule, a scalar reward model, a
            sequence-level advantage, another segmentation than the RM's), or (a
            `ConfigChangedError`) derived limits that differ from the ones of the
            unfinished run stored in `run_dir`.
        ModelDirError: A model dir is missing, unusable, or has a truncated or corrupt
            safetensors file.
        RewardError: The reward rule cannot be imported or called as f(prompt, response).
    """
    from transformers import AutoConfig

    from ray_rlhf.data.errors import DataValidationError
    from ray_rlhf.data.limits import resolve_token_limits
    from ray_rlhf.learning_rates import resolve_learning_rates
    from ray_rlhf.models.builders import check_policy_dir, load_tokenizer
    from ray_rlhf.models.checkpoint import count_parameters, describe_model_dir, max_positions

    base = base_dir if base_dir is not None else prepare_base_model(cfg, run_dir)
    check_policy_dir(base, trust_remote_code=cfg.model.trust_remote_code)
    tokenizer = load_tokenizer(base, trust_remote_code=cfg.model.trust_remote_code)
    built = " (built from model.tiny)" if cfg.model.path is None else ""
    logger.info("model: %s%s: %s", base, built, describe_model_dir(base))
    logger.info("chat template: %s", chat_template_choice(cfg.data.chat_template, tokenizer, base))
    if "ppo" in stages:
        check_reward(cfg)
    if "rm" in stages and cfg.rm.init_path is not None:
        check_rm_init(cfg.rm.init_path, cfg, tokenizer, "rm.init_path")
    texts = validate_data(cfg, run_dir, tokenizer, stages)
    logger.info("data: %s", describe_data(cfg, stages, texts.sizes))
    longest_prompt = _longest(tokenizer, texts.prompts)
    longest_response = _longest(tokenizer, texts.responses)
    limits = resolve_token_limits(
        cfg.data.max_prompt_tokens,
        cfg.data.max_response_tokens,
        longest_prompt=longest_prompt,
        longest_response=longest_response,
        max_positions=max_positions(base),
        toy=uses_toy_data(cfg, stages),
    )
    data = dataclasses.replace(
        cfg.data, max_prompt_tokens=limits.prompt, max_response_tokens=limits.response
    )
    resolved = dataclasses.replace(cfg, data=data)
    logger.info("token limits: %s", limits.describe())
    if longest_prompt > limits.prompt or longest_response > limits.response:
        try:  # the rows the model cannot hold; the error names them
            validate_data(resolved, run_dir, tokenizer, stages)
        except DataValidationError as error:
            error.hint = (
                f"The token limits were derived ({limits.describe()}): the model cannot hold "
                "these rows. Shorten or drop them, or start from a model with a longer context "
                "(max_position_embeddings)."
            )
            raise
    shown = [f"{stage}.lr" for stage in stages]
    if "ppo" in stages and cfg.ppo.advantage == "gae":
        shown.append("ppo.critic_lr")
    resolved, rates = resolve_learning_rates(resolved, count_parameters(base), shown)
    logger.info("learning rates: %s", rates)
    model_config = AutoConfig.from_pretrained(base, trust_remote_code=cfg.model.trust_remote_code)
    if "ppo" in stages:
        resolved, micro = resolve_micro_batch(resolved, model_config)
        logger.info("micro-batch: %s", micro)
    embedded = resolved.resources.address is None and not os.environ.get("RAY_ADDRESS")
    if embedded and not resolved.learner.use_gpu:
        import psutil  # an embedded CPU cluster: the learners share this machine's memory

        check_learner_memory(resolved, model_config, stages, psutil.virtual_memory().total)
    # A resumed run's stored limits were resolved too: compare like with like.
    check_resume_config(resolved, run_dir, only=DERIVED_KEYS)
    dump_config(resolved, run_dir / CONFIG_FILE)
    return resolved


def resolve_micro_batch(cfg: RLHFConfig, model_config: Any) -> tuple[RLHFConfig, str]:
    """`cfg` with `ppo.micro_batch_size` set (chosen from the estimated activation memory of
    the model of HF config `model_config` when unset, `ray_rlhf.models.memory`), and a log
    line saying why."""
    from ray_rlhf.learner.ppo_batch import row_bytes
    from ray_rlhf.models.memory import ACTIVATION_BUDGET_BYTES, auto_micro_batch

    per_row = row_bytes(cfg, model_config)
    share = cfg.ppo.minibatch_size // cfg.learner.num_workers
    tokens = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens
    estimate = f"about {per_row / 2**30:.2g} GiB of activations per row of {tokens} tokens"
    if cfg.ppo.micro_batch_size is not None:
        return (
            cfg,
            f"ppo.micro_batch_size {cfg.ppo.micro_batch_size} (set in the config; {estimate})",
        )
    micro = auto_micro_batch(share, per_row)
    ppo = dataclasses.replace(cfg.ppo, micro_batch_size=micro)
    why = (
        f"ppo.micro_batch_size {micro} rows per forward (unset: {estimate}, at most "
        f"{ACTIVATION_BUDGET_BYTES / 2**30:g} GiB per forward, dividing a learner's "
        f"{share}-row minibatch share)"
    )
    return dataclasses.replace(cfg, ppo=ppo), why


def check_learner_memory(
    cfg: RLHFConfig, model_config: Any, stages: Collection[Stage], total_bytes: int
) -> None:
    """Refuses a batch whose training forwards alone would need more memory than the
    machine has (estimated, `ray_rlhf.models.memory`): the run would be killed for memory
    after Ray started, the model loaded and the first batch was cut.

    Rows per forward on each learner: SFT `sft.batch_size / learners` (logits over every
    token), RM `2 x rm.batch_size / learners` (chosen and rejected, a scalar head), PPO
    `ppo.micro_batch_size` (logits over the response tokens).

    Raises:
        ConfigError: Naming the key, the estimate, the machine's memory and what to set.
    """
    from ray_rlhf.config import ConfigError
    from ray_rlhf.models.memory import activation_bytes_per_row

    workers = cfg.learner.num_workers
    prompt, response = cfg.data.max_prompt_tokens, cfg.data.max_response_tokens
    tokens = prompt + response
    dtype_bytes = 2 if cfg.model.dtype == "bfloat16" else 4
    forwards = {
        "sft": ("sft.batch_size", cfg.sft.batch_size, cfg.sft.batch_size // workers, tokens),
        "rm": ("rm.batch_size", cfg.rm.batch_size, 2 * (cfg.rm.batch_size // workers), 0),
        "ppo": ("ppo.micro_batch_size", cfg.ppo.micro_batch_size, cfg.ppo.micro_batch_size,
                response),
    }  # fmt: skip
    for stage in stages:
        key, value, rows, head = forwards[stage]
        per_row = activation_bytes_per_row(
            model_config,
            tokens,
            head,
            dtype_bytes,
            checkpointed=cfg.learner.gradient_checkpointing,
        )
        need = workers * rows * per_row
        if need <= total_bytes:
            continue
        fit = max(1, total_bytes // (2 * workers * per_row))  # half: weights, optimizer, ...
        share = cfg.ppo.minibatch_size // workers  # a PPO micro-batch must divide it
        micro = max(d for d in range(1, min(fit, share) + 1) if share % d == 0)
        suggest = {"sft": fit * workers, "rm": max(1, fit // 2) * workers, "ppo": micro}[stage]
        raise ConfigError(
            f"{key}: {value} means {rows} rows of {tokens} tokens per training forward on each "
            f"of the {workers} learners, about {need / 2**30:.0f} GiB of activations in all "
            f"(estimated), more than this machine's {total_bytes / 2**30:.0f} GiB; set "
            f"{key}={suggest} or lower, or learner.gradient_checkpointing=true"
        )


def chat_template_choice(mode: str, tokenizer: Any, model_dir: Path) -> str:
    """What `data.chat_template` means for this tokenizer, as a log line.

    Raises:
        ConfigError: `always` with a tokenizer that has no chat template.
    """
    from ray_rlhf.config import ConfigError

    has = tokenizer.chat_template is not None
    if mode == "always" and not has:
        raise ConfigError(
            f"data.chat_template: 'always', but the tokenizer of {model_dir} has no chat "
            "template; set data.chat_template=auto (or never) to use plain prompts as written"
        )
    if mode == "never" or not has:
        why = "data.chat_template=never" if mode == "never" else "the tokenizer has none"
        chat_rows = "; chat rows (message lists) still use the template" if has else ""
        return f"plain-text prompts are used as written ({why}){chat_rows}"
    return (
        "plain-text prompts (as one user message) and chat rows (message lists) are rendered "
        f"with the tokenizer's chat template (data.chat_template={mode})"
    )


def check_reward(cfg: RLHFConfig) -> None:
    """PPO's reward: `segment.*` fits it (a rule or a scalar RM gives no per-position
    scores; `check_segment_reward_model` reads the RM's metadata), and the reward rule
    imports and takes (prompt, response), or the RM dir is loadable."""
    from ray_rlhf.reward.segments import check_segment_reward_model

    check_segment_reward_model(cfg)
    if cfg.reward.kind == "rule":
        from ray_rlhf.reward.rules import load_rule

        load_rule(cfg.reward.rule)
    else:
        from ray_rlhf.models.builders import load_tokenizer

        assert cfg.reward.model_path is not None  # RewardConfig checks this
        load_tokenizer(cfg.reward.model_path, trust_remote_code=cfg.model.trust_remote_code)


def check_rm_init(path: str | Path, cfg: RLHFConfig, tokenizer: Any, key: str) -> Path:
    """A reward model to continue training: a saved RM with `rm.head` whose tokenizer has
    the policy's vocabulary (the pairs are encoded with the policy's tokenizer).

    Raises:
        ModelDirError: The dir is not a reward model of `rm.head` (`check_reward_model_dir`).
        ConfigError: Naming `key`: its vocabulary differs from the policy's.
    """
    from ray_rlhf.config import ConfigError
    from ray_rlhf.models.builders import check_reward_model_dir, load_tokenizer

    out = check_reward_model_dir(
        path, head=cfg.rm.head, trust_remote_code=cfg.model.trust_remote_code
    )
    theirs = load_tokenizer(out, trust_remote_code=cfg.model.trust_remote_code)
    if theirs.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"{key}: the reward model {out} has another vocabulary than the policy; continue "
            "a reward model trained from this policy (or its SFT base)"
        )
    return out


def _longest(tokenizer: Any, texts: list[str]) -> int:
    """Tokens of the longest text, as the length limits count them (0 for no texts)."""
    from ray_rlhf.data.prompts import count_tokens

    return max((n for n in count_tokens(tokenizer, texts) if n is not None), default=0)


def _stage_paths(cfg: RLHFConfig, stages: Collection[Stage]) -> list[str | None]:
    """The data paths the stages read (None: the toy world's split)."""
    paths = {
        "sft": [cfg.data.sft_path],
        "rm": [cfg.data.preferences_path, cfg.data.eval_preferences_path],
        # Without eval_prompts_path, eval prompts are held out of prompts_path.
        "ppo": [cfg.data.prompts_path, cfg.data.eval_prompts_path or cfg.data.prompts_path],
    }
    return [path for stage in stages for path in paths[stage]]


def uses_toy_data(cfg: RLHFConfig, stages: Collection[Stage]) -> bool:
    """Whether every data file the stages read is the toy world's."""
    return all(path is None for path in _stage_paths(cfg, stages))


def describe_data(cfg: RLHFConfig, stages: Collection[Stage], sizes: dict[str, int]) -> str:
    """`20000 SFT pairs, 2000 train prompts, 100 eval prompts (the toy world)`."""
    counts = ", ".join(f"{n} {kind}" for kind, n in sizes.items())
    paths = _stage_paths(cfg, stages)
    sources = sorted({path for path in paths if path is not None})
    if None in paths:
        sources.append("the toy world")
    return f"{counts} ({', '.join(sources)})"


def validate_data(
    cfg: RLHFConfig, run_dir: Path, tokenizer: Any, stages: Collection[Stage]
) -> RunTexts:
    """Loads and validates the stages' data as the stages will (set token limits are hard
    limits); returns their prompts and responses."""
    out = RunTexts([], [], {})
    if "sft" in stages:
        _sft_texts(cfg, run_dir, tokenizer, out)
    if "rm" in stages:
        _preference_texts(cfg, run_dir, tokenizer, out)
    if "ppo" in stages:
        _prompt_texts(cfg, run_dir, tokenizer, out)
    return out


def _loader_options(cfg: RLHFConfig) -> dict[str, Any]:
    """The loaders' keyword arguments that come from `data`: token limits, chat template."""
    return {
        "max_prompt_tokens": cfg.data.max_prompt_tokens,
        "max_response_tokens": cfg.data.max_response_tokens,
        "chat_template": cfg.data.chat_template,
    }


def _sft_texts(cfg: RLHFConfig, run_dir: Path, tokenizer: Any, out: RunTexts) -> None:
    from ray_rlhf.data.sft import load_sft

    source = cfg.data.sft_path or toyworld_files(cfg, run_dir)["sft"]
    ds = load_sft(str(source), tokenizer=tokenizer, **_loader_options(cfg))
    out.prompts.extend(ds["prompt"])
    out.responses.extend(ds["response"])
    out.sizes["SFT pairs"] = ds.num_rows


def _preference_texts(cfg: RLHFConfig, run_dir: Path, tokenizer: Any, out: RunTexts) -> None:
    """Preference pairs: rows, the per-pair columns `cfg.rm` reads, held-out pairs per rank."""
    from ray_rlhf.data.preferences import load_preferences
    from ray_rlhf.data.sampler import held_out_split
    from ray_rlhf.loops.rm import (
        EVAL_FRACTION,
        check_held_out_pairs,
        check_pair_columns,
        pair_sources,
    )

    def load(source: str) -> Any:
        ds = load_preferences(source, tokenizer=tokenizer, **_loader_options(cfg))
        out.prompts.extend(ds["prompt"])
        out.responses.extend([*ds["chosen"], *ds["rejected"]])
        return ds

    source, eval_source = pair_sources(cfg, run_dir)
    pairs = load(source)
    check_pair_columns(pairs, cfg, source)
    if eval_source is not None:
        n_train, n_eval = pairs.num_rows, load(eval_source).num_rows
    else:
        eval_source = source
        held_out = held_out_split(pairs, EVAL_FRACTION, cfg.run.seed)[1] if len(pairs) > 1 else []
        n_train, n_eval = len(pairs) - len(held_out), len(held_out)
    check_held_out_pairs(n_eval, cfg, eval_source)
    out.sizes.update({"preference pairs": n_train, "held-out pairs": n_eval})


def _prompt_texts(cfg: RLHFConfig, run_dir: Path, tokenizer: Any, out: RunTexts) -> None:
    """PPO's train and eval prompts (and their contrastive baselines, when enabled)."""
    from ray_rlhf.loops.ppo import check_baselines, load_prompt_sets

    train, held_out = load_prompt_sets(cfg, run_dir, tokenizer)
    out.prompts.extend(train.texts + held_out.texts)
    out.sizes.update({"train prompts": len(train.ids), "eval prompts": len(held_out.ids)})
    if cfg.data.prompts_path and not cfg.data.eval_prompts_path:
        logger.info(
            "data.eval_prompts_path is not set: holding out %d of the %d prompts of %s as "
            "eval prompts (data.eval_fraction=%g, seed %d); PPO trains on the other %d",
            len(held_out.ids),
            len(train.ids) + len(held_out.ids),
            cfg.data.prompts_path,
            cfg.data.eval_fraction,
            cfg.run.seed,
            len(train.ids),
        )
    if cfg.contrastive.enabled:
        check_baselines(cfg, [train, held_out])
