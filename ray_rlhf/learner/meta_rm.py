"""Meta-learned reward model (Jia 2024, arXiv 2402.14760; docs/algorithms.md §4): plain
classes that work in-process; `ray_rlhf.distributed.meta_rm` runs `DomainAdapter` in Ray tasks.

One outer step:

    domain_batches ──► per domain: DomainAdapter.meta_gradient(φ, batch)     (parallel)
                           K inner SGD steps on θ (a copy of the policy's last layers)
                           under r_φ from π_ref, outer loss on the domain's pairs,
                           dF_d/dφ by `ray_rlhf.algo.meta.meta_gradient`
                   ──► MetaRMLearner.apply(results): mean over domains, clip, Adam on φ

`MetaRMLearner` owns φ, its optimizer and the step count, and saves them atomically after
every outer step (`save` / `restore`). Plain torch Adam, no DeepSpeed: φ gets one update
per outer step from gradients computed elsewhere, so there is nothing to shard or
data-parallelize at the sizes this runs at (docs/meta_rm.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ray_rlhf.algo.meta import (
    InnerStats,
    kl_regularized_surrogate,
    meta_gradient,
    outer_preference_loss,
)
from ray_rlhf.algo.rm_loss import RMLossStats
from ray_rlhf.config_meta import MetaConfig
from ray_rlhf.data.sampler import global_batch_indices
from ray_rlhf.learner.meta_policy import (
    adapted_parameter_names,
    sample_responses,
    sequence_logprobs,
)
from ray_rlhf.learner.rm import pair_batch, stack_pairs

STATE_FILE = "state.json"
RM_FILE = "rm.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
_EVAL_ROWS = 256
"""Pairs per scoring forward in `MetaRMLearner.evaluate`."""


@dataclass(frozen=True)
class DomainData:
    """One domain's held-in preference pairs, tokenized."""

    prompts: list[list[int]]
    """Each pair's prompt token ids (`encode_prompts`), the inner loop's prompt pool."""
    pairs: dict[str, Tensor]
    """Tokenized pairs (`ray_rlhf.loops.rm.tokenize_pairs`), P rows."""


@dataclass(frozen=True)
class DomainBatch:
    """What one domain's inner loop and outer loss read in one outer step."""

    domain: str
    prompts: list[list[int]]
    """Inner prompts (token ids); responses are sampled from the adapting policy."""
    pairs: dict[str, Tensor]
    """Outer pairs (`tokenize_pairs` layout), disjoint from `prompts`' pairs."""
    seed: int
    """Seed of the inner loop's sampling."""


@dataclass(frozen=True)
class DomainResult:
    """A domain's meta-gradient and diagnostics."""

    domain: str
    grads: dict[str, Tensor]
    """Reward-model parameter name -> dF_d/dφ."""
    metrics: dict[str, float]
    """`outer_loss`, `outer_accuracy`, `inner_reward`, `inner_reward_ref`, `kl`, `seconds`."""


def domain_batches(
    data: dict[str, DomainData], cfg: MetaConfig, step: int, seed: int
) -> list[DomainBatch]:
    """The domains of outer step `step` and their inner prompts / outer pairs.

    Deterministic in (step, seed), so a resumed run sees what an uninterrupted one would:
    `domains_per_step` domains drawn without replacement (sorted by name), and from each
    `inner_prompts + outer_pairs` pairs by `global_batch_indices`; the first
    `inner_prompts` lend their prompts to the inner loop, the rest form the outer loss.
    """
    names = sorted(data)
    gen = torch.Generator().manual_seed(seed * 7919 + step)
    picked = sorted(torch.randperm(len(names), generator=gen)[: cfg.domains_per_step].tolist())
    batches = []
    for i in picked:
        domain = data[names[i]]
        n = len(domain.prompts)
        idx = global_batch_indices(n, cfg.inner_prompts + cfg.outer_pairs, step, seed * 1009 + i)
        inner, outer = idx[: cfg.inner_prompts], idx[cfg.inner_prompts :]
        batches.append(
            DomainBatch(
                domain=names[i],
                prompts=[domain.prompts[j] for j in inner.tolist()],
                pairs=pair_batch(domain.pairs, outer),
                seed=seed * 100003 + step * 101 + i,
            )
        )
    return batches


def reward_scores(rm: torch.nn.Module, rows: dict[str, Tensor]) -> Tensor:
    """(N,) r_φ(x, y): the scalar reward model's value at each row's last real token."""
    from ray_rlhf.models.builders import last_token_values, score_positions

    mask = rows["attention_mask"]
    return last_token_values(score_positions(rm, rows["input_ids"], mask.long()), mask)


class DomainAdapter:
    """Adapts π_ref to one domain under r_φ and returns the domain's meta-gradient.

    Holds the frozen policy (θ_ref) and a reward model whose weights each call replaces.

    Args:
        policy_dir: The reference policy π_ref (HF causal LM).
        rm_dir: Reward-model architecture to load (a causal LM gets a fresh scalar head);
            its weights are replaced by each call's `rm_weights`.
        cfg: The `meta` section.
        max_tokens: Longest sampled response (`data.max_response_tokens`).
    """

    def __init__(
        self, policy_dir: str | Path, rm_dir: str | Path, cfg: MetaConfig, max_tokens: int
    ) -> None:
        from ray_rlhf.models.builders import load_policy, load_reward_model, load_tokenizer

        self.cfg = cfg
        self.max_tokens = max_tokens
        self.policy = load_policy(policy_dir).eval().requires_grad_(False)
        # The meta-gradient differentiates the policy's backward pass (double backward),
        # which torch's fused CPU attention kernels do not implement.
        self.policy.set_attn_implementation("eager")
        self.rm = load_reward_model(rm_dir, head="scalar")
        tokenizer = load_tokenizer(policy_dir)
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.adapted = adapted_parameter_names(self.policy, cfg.adapt, cfg.adapt_layers)
        own = dict(self.policy.named_parameters())
        self.theta_ref = [own[name] for name in self.adapted]

    def _sample(
        self, theta: Sequence[Tensor], batch: DomainBatch, gen: torch.Generator
    ) -> dict[str, Tensor]:
        params = {name: t.detach() for name, t in zip(self.adapted, theta, strict=True)}
        return sample_responses(
            self.policy, params, batch.prompts, n_samples=self.cfg.n_samples,
            max_tokens=self.max_tokens, eos_id=self.eos_id, pad_id=self.pad_id,
            temperature=self.cfg.temperature, generator=gen,
        )  # fmt: skip

    def meta_gradient(self, rm_weights: dict[str, Tensor], batch: DomainBatch) -> DomainResult:
        """dF_d/dφ at φ = `rm_weights` for one domain (`ray_rlhf.algo.meta.meta_gradient`).

        Inner loss at θ_k: responses sampled from π_θk (fresh each step), scored by r_φ,
        `kl_regularized_surrogate` with β = `meta.beta`. Outer loss at θ_K:
        `outer_preference_loss` on the batch's pairs against π_ref's log-probs.
        """
        start = time.perf_counter()
        cfg = self.cfg
        self.rm.load_state_dict(rm_weights)
        phi_names, phi = zip(*self.rm.named_parameters(), strict=True)
        gen = torch.Generator().manual_seed(batch.seed)
        rows = stack_pairs(batch.pairs)  # (2P, T): chosen, then rejected
        with torch.no_grad():
            ref_chosen, ref_rejected = sequence_logprobs(self.policy, {}, rows).chunk(2)

        def inner(theta: Sequence[Tensor], k: int) -> tuple[Tensor, InnerStats]:
            samples = self._sample(theta, batch, gen)
            params = dict(zip(self.adapted, theta, strict=True))
            logp = sequence_logprobs(self.policy, params, samples)
            with torch.no_grad():
                ref = sequence_logprobs(self.policy, {}, samples)
            rewards = reward_scores(self.rm, samples)
            return kl_regularized_surrogate(logp, ref, rewards, cfg.beta, cfg.n_samples)

        def outer(theta: Sequence[Tensor]) -> tuple[Tensor, RMLossStats]:
            params = dict(zip(self.adapted, theta, strict=True))
            chosen, rejected = sequence_logprobs(self.policy, params, rows).chunk(2)
            return outer_preference_loss(chosen, ref_chosen, rejected, ref_rejected, cfg.beta)

        result = meta_gradient(
            self.theta_ref, phi, inner, outer, cfg.inner_lr, cfg.inner_steps, cfg.order
        )
        with torch.no_grad():  # the adapted policy: its reward under r_φ and its KL
            samples = self._sample(result.adapted, batch, gen)
            params = dict(zip(self.adapted, result.adapted, strict=True))
            log_ratio = sequence_logprobs(self.policy, params, samples) - sequence_logprobs(
                self.policy, {}, samples
            )
            reward = reward_scores(self.rm, samples)
        metrics = {
            "outer_loss": float(result.outer_loss),
            "outer_accuracy": float(result.outer_stats.accuracy),
            "inner_reward": float(reward.mean()),
            "inner_reward_ref": float(result.inner[0].reward),
            "kl": float(log_ratio.mean()),
            "seconds": time.perf_counter() - start,
        }
        grads = dict(zip(phi_names, result.grads, strict=True))
        return DomainResult(batch.domain, grads, metrics)


class MetaRMLearner:
    """Owns the reward model φ, its Adam optimizer and the outer step count.

    Args:
        rm_dir: Where φ starts: a causal LM (backbone, fresh seeded scalar head) or a
            saved scalar reward model.
        cfg: The `meta` section (outer_lr, grad_clip).
        seed: Seed of a fresh head.
    """

    def __init__(self, rm_dir: str | Path, cfg: MetaConfig, *, seed: int = 0) -> None:
        from ray_rlhf.models.builders import load_reward_model

        self.cfg = cfg
        self.rm = load_reward_model(rm_dir, head="scalar", seed=seed)
        self.optimizer = torch.optim.Adam(self.rm.parameters(), lr=cfg.outer_lr)
        self.step = 0

    def weights(self) -> dict[str, Tensor]:
        """A detached copy of φ (the reward model's state dict)."""
        return {k: v.detach().clone() for k, v in self.rm.state_dict().items()}

    def apply(self, results: Sequence[DomainResult]) -> dict[str, float]:
        """One outer update from the domains' meta-gradients: their mean, clipped, Adam.

        Returns:
            `meta/<metric>` (mean over the domains) and `meta/<metric>/<domain>` for each
            `DomainResult.metrics` key, `meta/grad_norm` (before clipping), `meta/step`.
        """
        params = dict(self.rm.named_parameters())
        for name, p in params.items():
            p.grad = torch.stack([r.grads[name] for r in results]).mean(0).to(p.dtype)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params.values(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        metrics = {"meta/grad_norm": float(norm), "meta/step": float(self.step)}
        for key in results[0].metrics:
            values = [r.metrics[key] for r in results]
            metrics[f"meta/{key}"] = sum(values) / len(values)
            metrics |= {f"meta/{key}/{r.domain}": r.metrics[key] for r in results}
        return metrics

    @torch.no_grad()
    def evaluate(self, pairs: dict[str, Tensor]) -> dict[str, float]:
        """Held-out `eval/accuracy` of r_φ and `eval/score_mean` / `eval/score_std` over
        both responses of every pair (the normalization `train-rm` records)."""
        self.rm.eval()
        n = pairs["chosen_input_ids"].shape[0]
        chosen, rejected = [], []
        for lo in range(0, n, _EVAL_ROWS):
            rows = stack_pairs(pair_batch(pairs, torch.arange(lo, min(lo + _EVAL_ROWS, n))))
            c, r = reward_scores(self.rm, rows).double().chunk(2)
            chosen.append(c)
            rejected.append(r)
        self.rm.train()
        c, r = torch.cat(chosen), torch.cat(rejected)
        scores = torch.cat([c, r])
        return {
            "eval/accuracy": float((c > r).double().mean()),
            "eval/score_mean": float(scores.mean()),
            "eval/score_std": float(scores.std(unbiased=False)),
        }

    def save(self, directory: str | Path) -> None:
        """φ, the Adam state and the step, replacing `directory` atomically."""
        from ray_rlhf.models.checkpoint import atomic_dir, save_json_atomic, save_tensors

        opt = self.optimizer.state_dict()
        moments = {f"{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
        with atomic_dir(directory) as tmp:
            save_tensors(tmp / RM_FILE, self.rm.state_dict())
            save_tensors(tmp / OPTIMIZER_FILE, moments)
            save_json_atomic(
                tmp / STATE_FILE, {"step": self.step, "param_groups": opt["param_groups"]}
            )

    def restore(self, directory: str | Path) -> bool:
        """Load what `save` wrote; False (nothing changed) when `directory` is absent."""
        from ray_rlhf.models.checkpoint import load_json, load_tensors

        directory = Path(directory)
        if not (directory / STATE_FILE).is_file():
            return False
        state = load_json(directory / STATE_FILE)
        self.rm.load_state_dict(load_tensors(directory / RM_FILE))
        moments: dict[int, dict[str, Tensor]] = {}
        for key, value in load_tensors(directory / OPTIMIZER_FILE).items():
            index, name = key.split(".", 1)
            moments.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": moments, "param_groups": state["param_groups"]})
        self.step = int(state["step"])
        return True

    def outer_step(
        self, adapter: DomainAdapter, batches: Sequence[DomainBatch]
    ) -> dict[str, float]:
        """One outer step in this process: every domain's meta-gradient in turn, then `apply`."""
        weights = self.weights()
        return self.apply([adapter.meta_gradient(weights, batch) for batch in batches])
