"""What a run checks before Ray starts, and the token limits that settles.

`preflight` loads and validates every data file the run's stages read, with the tokenizer of
the model they start from, then resolves `data.max_prompt_tokens` / `data.max_response_tokens`
(`ray_rlhf.data.limits`). Every command's `run_job` calls it once, before `init_ray` and
before any stage trains, and hands the returned config to its stages.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any, Literal, NamedTuple

from ray_rlhf.config import RLHFConfig, dump_config
from ray_rlhf.loops.common import prepare_base_model, toyworld_files

Stage = Literal["sft", "rm", "ppo"]
"""A stage of a run: each reads its own data (SFT pairs, preference pairs, prompts)."""

logger = logging.getLogger(__name__)


class RunTexts(NamedTuple):
    """Every prompt and every SFT / preference response the stages will read."""

    prompts: list[str]
    responses: list[str]


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
        `cfg` with integer `data.max_prompt_tokens` and `data.max_response_tokens`; also
        written to `run_dir/config.yaml`.

    Raises:
        DataValidationError: Naming file, row and field of bad or over-long rows.
        ConfigError: Naming the keys of limits the model cannot hold.
        ModelDirError: The model dir is missing or unusable.
    """
    from ray_rlhf.data.limits import resolve_token_limits
    from ray_rlhf.models.builders import load_tokenizer
    from ray_rlhf.models.checkpoint import max_positions

    base = base_dir if base_dir is not None else prepare_base_model(cfg, run_dir)
    tokenizer = load_tokenizer(base, trust_remote_code=cfg.model.trust_remote_code)
    texts = load_texts(cfg, run_dir, tokenizer, stages)
    longest_prompt, longest_response = (_longest(tokenizer, t) for t in texts)
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
        load_texts(resolved, run_dir, tokenizer, stages)  # names the rows that do not fit
    dump_config(resolved, run_dir / "config.yaml")
    return resolved


def _longest(tokenizer: Any, texts: list[str]) -> int:
    """Tokens of the longest text, as the length limits count them (0 for no texts)."""
    from ray_rlhf.data.prompts import count_tokens

    return max((n for n in count_tokens(tokenizer, texts) if n is not None), default=0)


def uses_toy_data(cfg: RLHFConfig, stages: Collection[Stage]) -> bool:
    """Whether every data file the stages read is the toy world's."""
    paths = {
        "sft": [cfg.data.sft_path],
        "rm": [cfg.data.preferences_path],
        "ppo": [cfg.data.prompts_path, cfg.data.eval_prompts_path],
    }
    return all(path is None for stage in stages for path in paths[stage])


def load_texts(
    cfg: RLHFConfig, run_dir: Path, tokenizer: Any, stages: Collection[Stage]
) -> RunTexts:
    """Loads and validates the stages' data (set token limits are hard limits)."""
    from ray_rlhf.data.preferences import load_preferences
    from ray_rlhf.data.sft import load_sft
    from ray_rlhf.loops.ppo import load_prompt_sets

    limits = {
        "max_prompt_tokens": cfg.data.max_prompt_tokens,
        "max_response_tokens": cfg.data.max_response_tokens,
    }
    needs_toy = ("sft" in stages and cfg.data.sft_path is None) or (
        "rm" in stages and cfg.data.preferences_path is None
    )
    toy = toyworld_files(cfg, run_dir) if needs_toy else {}
    out = RunTexts([], [])
    if "sft" in stages:
        ds = load_sft(str(cfg.data.sft_path or toy["sft"]), tokenizer=tokenizer, **limits)
        out.prompts.extend(ds["prompt"])
        out.responses.extend(ds["response"])
    if "rm" in stages:
        sources = [cfg.data.preferences_path] if cfg.data.preferences_path else []
        for source in sources or [toy["pref_train"], toy["pref_test"]]:
            ds = load_preferences(str(source), tokenizer=tokenizer, **limits)
            out.prompts.extend(ds["prompt"])
            out.responses.extend([*ds["chosen"], *ds["rejected"]])
    if "ppo" in stages:
        train, held_out = load_prompt_sets(cfg, run_dir, tokenizer)
        out.prompts.extend(train.texts + held_out.texts)
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
    return out
