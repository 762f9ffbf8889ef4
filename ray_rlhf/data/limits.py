"""Token limits of a run: `data.max_prompt_tokens` and `data.max_response_tokens`.

A value set in the config is a hard limit: a longer row is a data error, and a pair of
values the model cannot hold is a config error. An unset (None) value is derived:

- the prompt limit is the longest prompt in the run's data (after chat templating);
- the response limit is `DEFAULT_RESPONSE_TOKENS`, or the longest SFT / preference
  response if that is longer;
- the toy world keeps `TOY_LIMITS`, which its tiny model was sized for;
- both are capped so that prompt + response + `SPECIAL_TOKENS` fit the model's
  `max_position_embeddings` (vLLM's `max_model_len`).

`ray_rlhf.loops.preflight` measures the data and calls `resolve_token_limits` once per run,
before Ray starts; every stage then reads the resolved values from the config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from ray_rlhf.typed_config import ConfigError

if TYPE_CHECKING:
    from ray_rlhf.config import DataConfig

SPECIAL_TOKENS = 2
"""BOS before the prompt and EOS after the response: a sequence holds at most
prompt limit + response limit + 2 tokens."""

DEFAULT_RESPONSE_TOKENS = 256
"""Derived response limit of a run on real data (before the cap)."""

TOY_PROMPT_TOKENS = 32
TOY_RESPONSE_TOKENS = 16
"""Derived limits of a run on the toy world's data (its tiny model has 128 positions)."""


class TokenLimits(NamedTuple):
    """Resolved limits, and why each has its value (for the log and error hints)."""

    prompt: int
    response: int
    prompt_reason: str
    response_reason: str

    def describe(self) -> str:
        """E.g. `prompt 87 (longest prompt in the data), response 256 (default)`."""
        return (
            f"prompt {self.prompt} ({self.prompt_reason}), "
            f"response {self.response} ({self.response_reason})"
        )


def resolve_token_limits(
    prompt: int | None,
    response: int | None,
    *,
    longest_prompt: int,
    longest_response: int,
    max_positions: int | None,
    toy: bool,
) -> TokenLimits:
    """Resolves the configured limits (None: derive) against the data and the model.

    A derived limit may come out below the data's longest row when the model cannot hold
    that row; the caller then re-checks the data against the result, so the error names
    the rows.

    Args:
        prompt: `data.max_prompt_tokens`, or None.
        response: `data.max_response_tokens`, or None.
        longest_prompt: Tokens of the longest prompt in the data (special tokens excluded).
        longest_response: Tokens of the longest SFT / preference response (0 if none).
        max_positions: The model's `max_position_embeddings`; None when unknown (no cap).
        toy: The data is the toy world's (derived limits are `TOY_*_TOKENS`).

    Raises:
        ConfigError: Naming the keys, when set values leave no room in the model.
    """
    if prompt is not None:
        p, p_why = prompt, "data.max_prompt_tokens"
    elif toy:
        p, p_why = TOY_PROMPT_TOKENS, "toy-world default"
    else:
        p, p_why = longest_prompt, "longest prompt in the data"
    if response is not None:
        r, r_why = response, "data.max_response_tokens"
    elif toy:
        r, r_why = TOY_RESPONSE_TOKENS, "toy-world default"
    elif longest_response > DEFAULT_RESPONSE_TOKENS:
        r, r_why = longest_response, "longest response in the data"
    else:
        r, r_why = DEFAULT_RESPONSE_TOKENS, "default"
    if max_positions is None:
        return TokenLimits(p, r, p_why, r_why)
    room = max_positions - SPECIAL_TOKENS
    cap = f"the model's max_position_embeddings={max_positions}"
    if prompt is not None and response is not None and p + r > room:
        raise ConfigError(
            f"data.max_prompt_tokens + data.max_response_tokens: {p} + {r} + {SPECIAL_TOKENS} "
            f"(BOS, EOS) is more than {cap}; lower them to a sum of at most {room}"
        )
    if prompt is not None and p >= room:
        raise ConfigError(
            f"data.max_prompt_tokens: {p} leaves no room for a response within {cap}; "
            f"set it below {room}"
        )
    if response is not None and r >= room:
        raise ConfigError(
            f"data.max_response_tokens: {r} leaves no room for a prompt within {cap}; "
            f"set it below {room}"
        )
    # A derived prompt limit leaves room for the set response limit, or for 1 token.
    prompt_room = room - r if response is not None else room - 1
    if prompt is None and p > prompt_room:
        p = prompt_room
        p_why += f", capped by {cap}"
    if response is None and r > room - p:
        r = room - p
        r_why += f", capped by {cap} - prompt limit - {SPECIAL_TOKENS}"
    return TokenLimits(p, r, p_why, r_why)


def max_sequence_tokens(data: DataConfig) -> int:
    """Longest prompt + response + BOS / EOS a run holds (vLLM's `max_model_len`).

    Raises:
        ValueError: The limits were not resolved (`ray_rlhf.loops.preflight.preflight`).
    """
    if data.max_prompt_tokens is None or data.max_response_tokens is None:
        raise ValueError(
            "data.max_prompt_tokens / data.max_response_tokens are unresolved; pass the config "
            "through ray_rlhf.loops.preflight.preflight first"
        )
    return data.max_prompt_tokens + data.max_response_tokens + SPECIAL_TOKENS
