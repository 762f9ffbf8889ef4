"""An example rule reward for `reward.rule=examples/custom_reward/rule.py:reward`.

ray_rlhf calls `reward(prompt, response)` once per sampled response and wants a finite
float back. `prompt` is the prompt as it is written in your data file (for a chat row, the
last user message), `response` the decoded response without special tokens. Because this
function also takes `rendered_prompt`, it gets the exact text the model read too (the
prompt after the chat template, when one applies); leave the keyword out if you do not need
it. The rule runs inside the reward actors: keep it deterministic and cheap, and import
what it needs at module level.

This one scores the toy world's list tasks (`sort 3 1 2 =`) without knowing the task:
the response should hold as many numbers as the prompt's list, and only numbers from it
when the task is a permutation (sort, rev, copy).
"""

from __future__ import annotations

PERMUTATIONS = {"sort", "sortd", "rev", "copy"}


def reward(prompt: str, response: str, rendered_prompt: str | None = None) -> float:
    """1.0 for a response of the right length made of the right numbers; less otherwise.

    Args:
        prompt: The prompt as written in the data, e.g. `"sort 3 1 2 ="`.
        response: The policy's response, e.g. `"1 2 3"`.
        rendered_prompt: The prompt as the model read it (equal to `prompt` when no chat
            template applies). Unused here; shown so you can see how to ask for it.

    Returns:
        A score in [-1, 1]: length match (0.5) plus items drawn from the prompt (0.5);
        -1 for an empty response.
    """
    task, *items = prompt.replace("=", " ").split()
    answer = response.split()
    if not answer:
        return -1.0
    length = 0.5 * min(len(answer), len(items)) / max(len(answer), len(items), 1)
    if task not in PERMUTATIONS:
        return 2 * length  # running sums / counts: only the length is checked
    pool = list(items)
    drawn = 0
    for item in answer:
        if item in pool:
            pool.remove(item)
            drawn += 1
    return length + 0.5 * drawn / len(answer)
