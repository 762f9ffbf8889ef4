"""Rule rewards: Python functions named by a `"module:function"` or `"file.py:function"` spec.

A rule is `f(prompt: str, response: str) -> float`, called once per row. `prompt` is the
prompt as the user wrote it (a plain row's text, a chat row's last user message), not the
chat-templated text the model read; a rule that also takes a keyword argument
`rendered_prompt` (or `**kwargs`) gets that text too. A rule that sets the attribute
`batched = True` is called once per batch instead, as
`f(prompts: list[str], responses: list[str]) -> list[float]` (row i is prompts[i],
responses[i]; the keyword is `rendered_prompts`); use it when the rule has per-call
overhead worth sharing (a tokenizer, a compiled regex set, a subprocess). `RuleSource`
scores rollout batches with a loaded rule. examples/custom_reward/ has a worked rule.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import numbers
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ray_rlhf.errors import RewardError
from ray_rlhf.types import RolloutBatch

Rule = Callable[..., Any]
"""A loaded rule: per-row `(prompt, response) -> float`, or batched (see `is_batched`)."""

_FILE_SUFFIX = ".py"
RENDERED_KEYWORD = "rendered_prompt"
"""Keyword under which a per-row rule that accepts it gets the rendered prompt."""
BATCHED_RENDERED_KEYWORD = "rendered_prompts"
"""The same for a batched rule (a list, row-aligned with `prompts`)."""


def _split_spec(spec: str) -> tuple[str, str]:
    """Splits `"where:function"` at its last colon; checks both parts are present."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise RewardError(
            f"rule {spec!r}: expected 'package.module:function' or 'path/to/file.py:function'"
        )
    return where, name


def _import_module(spec: str, module_name: str) -> ModuleType:
    """Imports `module_name`; a missing module (not a failing import inside it) is a
    RewardError naming the spec."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise RewardError(f"rule {spec!r}: module {module_name!r} not found") from err
        raise


def _load_file(spec: str, file_path: str) -> ModuleType:
    """Executes a `.py` file (relative to the CWD or absolute) as a fresh module.

    The module is (re-)registered in `sys.modules` under a name derived from its absolute
    path, so dataclasses inside it work and two files with the same stem do not collide.
    """
    path = Path(file_path).expanduser().resolve()
    if not path.is_file():
        raise RewardError(f"rule {spec!r}: file {str(path)!r} not found")
    module_name = "_ray_rlhf_rule_" + "_".join(path.with_suffix("").parts[1:])
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardError(f"rule {spec!r}: cannot load {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def load_rule(spec: str) -> Rule:
    """Loads the rule function a spec names.

    Args:
        spec: `"package.module:function"` (imported), or `"path/to/file.py:function"`
            (relative to the current directory or absolute; executed from that file).

    Returns:
        The function. Call it per row, or per batch when `is_batched(rule)`.

    Raises:
        RewardError: Naming the spec, if its format is wrong, the module or file does not
            exist, the attribute is missing, or it is not callable with two arguments
            (and the rendered-prompt keyword, if it takes one: `rendered_keyword`).
    """
    where, name = _split_spec(spec)
    if where.endswith(_FILE_SUFFIX):
        module = _load_file(spec, where)
    else:
        module = _import_module(spec, where)
    if not hasattr(module, name):
        raise RewardError(f"rule {spec!r}: {module.__name__!r} has no attribute {name!r}")
    rule = getattr(module, name)
    if not callable(rule):
        raise RewardError(f"rule {spec!r}: {name!r} is a {type(rule).__name__}, not callable")
    keyword = rendered_keyword(rule)
    extra = {keyword: "rendered"} if keyword else {}
    try:
        inspect.signature(rule).bind("prompt", "response", **extra)
    except TypeError as err:
        raise RewardError(
            f"rule {spec!r}: {name!r} cannot be called as {name}(prompt, response): {err}"
        ) from err
    except ValueError:  # no signature to inspect (some builtins): calls will tell
        pass
    return rule


def is_batched(rule: Rule) -> bool:
    """True when the rule takes whole lists (`rule.batched = True`)."""
    return getattr(rule, "batched", False) is True


def rendered_keyword(rule: Rule) -> str | None:
    """The keyword the rule takes the rendered prompt(s) under, or None if it takes none.

    A rule takes it when its signature has a parameter of that name (positional-or-keyword
    or keyword-only) or a `**kwargs`; `rendered_prompts` for batched rules.
    """
    name = BATCHED_RENDERED_KEYWORD if is_batched(rule) else RENDERED_KEYWORD
    try:
        params = inspect.signature(rule).parameters
    except (TypeError, ValueError):  # no signature to inspect (some builtins)
        return None
    by_keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if name in params and params[name].kind in by_keyword:
        return name
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return name
    return None


def absolute_rule_spec(spec: str) -> str:
    """The same spec with a file path made absolute, so other processes (Ray actors, whose
    working directory may differ) load the same file. Module specs are returned as is.

    Raises:
        RewardError: If the spec's format is wrong.
    """
    where, name = _split_spec(spec)
    if not where.endswith(_FILE_SUFFIX):
        return spec
    return f"{Path(where).expanduser().resolve()}:{name}"


def rows_prompts(batch: RolloutBatch) -> list[str]:
    """(N,) prompt text of every row, as the model read it."""
    return [batch.prompt_of_row(i) for i in range(batch.num_samples)]


def rows_user_prompts(batch: RolloutBatch) -> list[str]:
    """(N,) prompt of every row as the user wrote it (see `RolloutBatch.user_prompts`)."""
    return [batch.user_prompt_of_row(i) for i in range(batch.num_samples)]


class RuleRowError(RewardError):
    """A rule failed on, or returned a non-number for, row `row` of its inputs."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = row


class RuleSource:
    """Raw scores from a rule function (`ray_rlhf.reward.rules`)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.rule = load_rule(spec)
        self.rendered_keyword = rendered_keyword(self.rule)  # inspected once

    def score_batch(self, batch: RolloutBatch) -> tuple[torch.Tensor, None]:
        """(N,) float64 rule scores of the batch's rows; no per-position values.

        Raises:
            RuleRowError: See `score_texts` (row indices are the batch's).
        """
        prompts = rows_prompts(batch)
        scores = self.score_texts(prompts, batch.responses, [], rows_user_prompts(batch))
        return scores, None

    def score_texts(
        self,
        prompts: Sequence[str],
        responses: Sequence[str],
        finished: Sequence[bool],
        user_prompts: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """(M,) float64 rule scores of (prompt, response) pairs; `finished` is unused.

        Args:
            prompts: (M,) prompts as the model read them (the rule's `rendered_prompt`).
            responses: (M,) response texts.
            finished: Unused (the reward-model source appends EOS to finished rows).
            user_prompts: (M,) prompts as the user wrote them, the rule's `prompt`; None
                when they equal `prompts`.

        Raises:
            RuleRowError: If the rule raises on a pair or returns a non-number for it.
            RewardError: If a batched rule returns the wrong number of rewards.
        """
        users = list(prompts if user_prompts is None else user_prompts)
        if is_batched(self.rule):
            extra = {self.rendered_keyword: list(prompts)} if self.rendered_keyword else {}
            values = list(self.rule(users, list(responses), **extra))
            if len(values) != len(responses):
                raise RewardError(
                    f"batched rule {self.spec!r} returned {len(values)} rewards for "
                    f"{len(responses)} responses"
                )
        else:
            rows = zip(users, responses, prompts, strict=True)
            values = [self._call(row, *texts) for row, texts in enumerate(rows)]
        for row, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise RuleRowError(row, f"rule {self.spec!r} returned {value!r}, not a number")
        return torch.tensor([float(v) for v in values], dtype=torch.float64)

    def _call(self, row: int, prompt: str, response: str, rendered: str) -> Any:
        """The per-row rule on one pair; an exception becomes a `RuleRowError`."""
        extra = {self.rendered_keyword: rendered} if self.rendered_keyword else {}
        try:
            return self.rule(prompt, response, **extra)
        except Exception as err:
            message = f"rule {self.spec!r} raised {type(err).__name__}: {err}"
            raise RuleRowError(row, message) from err
