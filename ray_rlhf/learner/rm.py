"""RMLearner: a plain class around one DeepSpeed engine training a Bradley-Terry reward model.

Works in any process where torch.distributed is initialized (a Ray Train worker, torchrun,
or a single process with world size 1); Ray is not imported here.

A batch of P pairs holds both sides padded to one width T:
chosen_input_ids / rejected_input_ids (P, T) long, chosen_attention_mask /
rejected_attention_mask and chosen_response_mask / rejected_response_mask (P, T) bool,
optionally chosen_segment_ends / rejected_segment_ends (P, T) bool, and optionally
strength (P,) and margin (P,) float. Both sides go through ONE forward as (2P, T) rows.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path

import torch

from ray_rlhf.algo.decompose import (
    cross_prompt_gaps,
    in_batch_alternative_indices,
    prioritized_weights,
)
from ray_rlhf.algo.rm_contrastive import meta_difference, meta_rm_backward
from ray_rlhf.algo.rm_loss import bradley_terry_loss, preference_accuracy
from ray_rlhf.algo.segments import segment_mean_scores
from ray_rlhf.algo.strength import StrengthLossTerms, apply_flip, strength_loss_terms
from ray_rlhf.algo.tokens import join_prompts_and_responses
from ray_rlhf.config import LearnerConfig, ModelConfig, RMConfig
from ray_rlhf.learner.engine import (
    SingleEngineLearner,
    full_state_dict,
    init_engine,
    mean_over_ranks_,
)
from ray_rlhf.learner.rm_representation import (
    PROTOTYPES_KEY,
    attach_prototypes,
    captured_inputs,
    contrastive_term,
    forced_dropout,
)
from ray_rlhf.learning_rates import lr_for
from ray_rlhf.models.builders import (
    last_token_states,
    last_token_values,
    load_reward_model,
    score_positions,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def sequence_scores(
    values: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    head: str,
    segment_ends: torch.Tensor | None = None,
) -> torch.Tensor:
    """A sequence's reward from per-position values.

    Args:
        values: (N, T) per-position values (`score_positions`).
        attention_mask: (N, T) bool, True on real tokens.
        response_mask: (N, T) bool, True on response tokens (EOS included).
        head: "scalar": the value at the last real token; "per_position": the mean of the
            values at the segment ends (a segment / token-level reward model; Yin et al.
            2025, arXiv 2501.02790).
        segment_ends: (N, T) bool, True at the last token of each response segment
            (docs/algorithms.md §5); required by "per_position".

    Returns:
        (N,) scores.

    Raises:
        ValueError: If head is "per_position" and `segment_ends` is None.
    """
    if head == "scalar":
        return last_token_values(values, attention_mask)
    if segment_ends is None:
        raise ValueError(
            "a per_position reward model scores segments: the batch needs chosen_/rejected_"
            "segment_ends (loops.rm.load_rm_tensors adds them)"
        )
    return segment_mean_scores(values, segment_ends)


def stack_pairs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """[chosen; rejected] rows of a pair batch.

    Args:
        batch: P pairs (see the module docstring).

    Returns:
        input_ids (2P, T), attention_mask (2P, T), response_mask (2P, T); rows 0..P-1 are
        the chosen responses, rows P..2P-1 the rejected ones.
    """
    keys = ("input_ids", "attention_mask", "response_mask", "segment_ends")
    return {
        k: torch.cat([batch[f"chosen_{k}"], batch[f"rejected_{k}"]])
        for k in keys
        if f"chosen_{k}" in batch
    }


def pair_batch(data: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Pairs `idx` of `data`, both sides trimmed to the longest sequence in them.

    Args:
        data: P pairs (see the module docstring), right-padded.
        idx: (B,) long row indices.

    Returns:
        B pairs in the same layout, 2-D tensors cut to the longest real row.
    """
    rows = {k: v[idx] for k, v in data.items()}
    width = int(
        torch.cat([rows["chosen_attention_mask"], rows["rejected_attention_mask"]]).sum(1).max()
    )
    return {k: v[:, :width] if v.dim() == 2 else v for k, v in rows.items()}


def meta_batch(data: dict[str, torch.Tensor], idx: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """The k response rows of each prompt in `idx`, trimmed to the longest real row.

    Args:
        data: A meta set: (M k, T) tensors, prompt-major (see the module docstring).
        idx: (P',) long prompt indices.
        k: Responses per prompt.

    Returns:
        (P' k, T') tensors, prompt-major.
    """
    rows = (idx[:, None] * k + torch.arange(k)).reshape(-1)  # (P' k,)
    picked = {key: value[rows] for key, value in data.items()}
    width = int(picked["attention_mask"].sum(1).max())
    return {key: value[:, :width] for key, value in picked.items()}


class RMLearner(SingleEngineLearner):
    """Owns the reward-model engine; one `train_step` is one optimizer step on a micro-batch."""

    def __init__(
        self,
        model_dir: str | Path,
        model_cfg: ModelConfig,
        learner_cfg: LearnerConfig,
        rm_cfg: RMConfig,
        *,
        micro_batch_per_worker: int,
        seed: int = 0,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.rm_cfg = rm_cfg
        model = load_reward_model(
            model_dir,
            head=rm_cfg.head,
            dtype=_DTYPES[model_cfg.dtype],
            trust_remote_code=model_cfg.trust_remote_code,
            seed=seed,
        )
        self.config = model.config
        if rm_cfg.contrastive.kind == "swav":
            hidden = model.config.get_text_config().hidden_size
            attach_prototypes(model, rm_cfg.contrastive.prototypes, hidden, seed)
        self.engine = init_engine(
            model,
            learner_cfg,
            lr=lr_for(rm_cfg.lr, "rm.lr", model),
            weight_decay=0.0,
            total_steps=rm_cfg.steps,
            warmup_steps=rm_cfg.warmup_steps,
            micro_batch_per_worker=micro_batch_per_worker,
        )
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self._generator = torch.Generator().manual_seed(seed * 1009 + rank)

    def _forward(
        self, rows: dict[str, torch.Tensor], states: bool = False, engine: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(N,) scores of N rows and, with `states`, their (N, H) pooled last-token states
        (the score head's input, graph attached). `engine=False` calls the bare module:
        DeepSpeed then hooks no backward epilogue (gradient reduction) onto the outputs."""
        mask = rows["attention_mask"]
        capture = captured_inputs(self.engine.module.score) if states else nullcontext([])
        model = self.engine if engine else self.engine.module
        with capture as seen:
            values = score_positions(model, rows["input_ids"], mask.long())  # (N, T)
        scores = sequence_scores(
            values, mask, rows["response_mask"], self.rm_cfg.head, rows.get("segment_ends")
        )
        return scores, last_token_states(seen[0], mask) if states else None

    def _views(self, rows: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Two (N, H) dropout views of N rows' pooled states (SimCSE, Gao et al. 2021): one
        forward of the rows twice with every dropout at `rm.contrastive.dropout`
        (`forced_dropout`), so the views differ inside the network.

        A forward of its own keeps the BT rows at the model's own dropout. It calls the bare
        module: the engine then hooks its backward prologue onto the BT forward's outputs
        only, once per `engine.backward` (why `config_checks` rejects it under ZeRO-3).
        """
        twice = {k: v.repeat(2, 1) for k, v in rows.items()}  # (2N, T)
        with forced_dropout(self.engine.module, self.rm_cfg.contrastive.dropout):
            _, pooled = self._forward(twice, states=True, engine=False)
        assert pooled is not None  # states=True
        view_1, view_2 = pooled.chunk(2)
        return view_1, view_2

    def _scores(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(P,) chosen and (P,) rejected scores from one (2P, T) forward."""
        scores, _ = self._forward(stack_pairs(batch))
        return scores.chunk(2)

    @torch.no_grad()
    def prompt_free_gaps(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each pair's prompt-free gap dr2 from scoring it under other in-batch prompts.

        Mao et al. 2025 (docs/algorithms.md §1): `rm.prompt_free_prompts` other prompts of
        the batch, drawn uniformly, then `cross_prompt_gaps` (dr2 = logit of the mean
        preference). One extra forward over (2 P M) rows, no gradients.

        Args:
            batch: P >= 2 pairs (see the module docstring).

        Returns:
            (P,) float32 dr2, chosen minus rejected.
        """
        rows = stack_pairs(batch)
        pairs = batch["chosen_input_ids"].shape[0]
        alt = in_batch_alternative_indices(
            pairs, self.rm_cfg.prompt_free_prompts, self._generator
        )  # (P, M)
        own = torch.arange(pairs)[:, None].expand_as(alt)  # (P, M)
        prompt_rows = torch.cat([alt.reshape(-1), alt.reshape(-1)])  # chosen, then rejected
        response_rows = torch.cat([own.reshape(-1), own.reshape(-1) + pairs])
        joined = join_prompts_and_responses(
            rows["input_ids"], rows["attention_mask"], rows["response_mask"],
            prompt_rows, response_rows,
        )  # fmt: skip
        mask = joined["attention_mask"]
        values = score_positions(self.engine, joined["input_ids"], mask.long())
        chosen, rejected = last_token_values(values, mask).float().chunk(2)  # (P M,) each
        gaps = (chosen - rejected).view(pairs, -1)  # (P, M)
        return cross_prompt_gaps(gaps).prompt_free_gap

    def _loss_terms(
        self, batch: dict[str, torch.Tensor], pairs: int
    ) -> tuple[StrengthLossTerms, torch.Tensor | None]:
        """Strength-based margin / smoothing / flips, and the dataset margin if asked for."""
        cfg = self.rm_cfg
        if cfg.uses_strength and "strength" not in batch:
            raise ValueError(
                f"rm.loss={cfg.loss!r} needs a per-pair 'strength' column in the "
                "preference data; write one with `ray-rlhf preference-strength`"
            )
        mu = batch.get("strength", torch.zeros(pairs))
        terms = strength_loss_terms(
            mu.float(),
            cfg.loss,
            alpha=cfg.label_smoothing,
            flip_mode=cfg.flip_mode,
            fraction=cfg.flip_fraction,
        )
        if cfg.loss == "plain" and cfg.label_smoothing > 0:
            terms = terms._replace(label_smoothing=torch.full((pairs,), cfg.label_smoothing))
        return terms, batch.get("margin") if cfg.margin else None

    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss on P pairs at the current parameters, and its metrics."""
        pairs = batch["chosen_input_ids"].shape[0]
        terms, margin = self._loss_terms(batch, pairs)
        metrics: dict[str, float] = {}
        weights = None
        if self.rm_cfg.prioritized and pairs >= 2:
            dr2 = self.prompt_free_gaps(batch)  # (P,) chosen - rejected
            direction = torch.where(terms.flip, -1.0, 1.0)  # toward the trained label
            weights = prioritized_weights(
                dr2, direction, self.rm_cfg.prioritized_tau, self.rm_cfg.prioritized_alpha
            )
            metrics = {
                "rm/prompt_free_gap": float(dr2.mean()),
                "rm/weight_max": float(weights.max() * pairs),
            }
        cl = self.rm_cfg.contrastive
        shared = cl.kind != "none" and cl.views == "shared"
        rows = stack_pairs(batch)  # (2P, T)
        scores, pooled = self._forward(rows, states=shared)  # the model's own dropout
        chosen, rejected = scores.float().chunk(2)
        trained_chosen, trained_rejected = apply_flip(chosen, rejected, terms.flip)
        if margin is None and bool(terms.margin.any()):
            margin = terms.margin
        loss, _ = bradley_terry_loss(
            trained_chosen,
            trained_rejected,
            margin=margin,
            label_smoothing=terms.label_smoothing,
            weights=weights,
        )
        metrics |= {
            "rm/loss": float(loss.detach()),
            "rm/accuracy": float(preference_accuracy(chosen.detach(), rejected.detach())),
            "rm/margin": float((chosen - rejected).detach().mean()),
            "rm/flipped": float(terms.flip.float().mean()),
        }
        if cl.kind != "none":
            if shared:
                assert pooled is not None  # states=shared
                view_1 = view_2 = pooled  # (2P, H); contrastive_term draws the two masks
            else:
                view_1, view_2 = self._views(rows)  # (2P, H) each
            swav = cl.kind == "swav"
            prototypes = self.engine.module.get_parameter(PROTOTYPES_KEY) if swav else None
            term, term_metrics = contrastive_term(cl, view_1, view_2, prototypes)
            loss = loss + cl.weight * term
            metrics |= term_metrics
        return loss, metrics

    def _meta_backward(
        self, batch: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]
    ) -> dict[str, float]:
        """MetaRM (docs/algorithms.md §3d): the gradient of `_loss(batch)` taken after an
        SGD ascent step on J(meta), written into the engine at the restored parameters.

        The ascent uses the full parameters, which every rank holds under ZeRO 0-2 (ZeRO-2
        partitions gradients and optimizer state only), with grad J averaged over ranks, so
        every rank ascends to the same theta'. J's forward bypasses the engine, whose output
        hooks would otherwise run its gradient reduction on `autograd.grad(J)`. The engine's
        backward then reduces and partitions the BT gradient at theta' as usual; theta is
        restored before `step`.
        """
        k = self.rm_cfg.meta.k
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        stats, metrics = meta_rm_backward(
            params,
            lambda: meta_difference(self._forward(meta, engine=False)[0].float(), k),
            lambda: self._loss(batch),
            self.rm_cfg.meta.eta,
            backward=self.engine.backward,
            reduce_mean=mean_over_ranks_,
        )
        return metrics | {
            "rm/meta_difference": float(stats.meta_difference),
            "rm/meta_difference_after": float(stats.meta_difference_after),
            "rm/meta_grad_norm": float(stats.meta_grad_norm),
        }

    def train_step(
        self, batch: dict[str, torch.Tensor], meta: dict[str, torch.Tensor] | None = None
    ) -> dict[str, float]:
        """One forward/backward/step on P pairs (and, with MetaRM, a meta batch).

        The loss is `bradley_terry_loss` with what `rm` selects: the dataset `margin`, the
        strength loss `rm.loss` (flips, adaptive margin, smoothing from the `strength`
        column; Wang et al. 2024), the prompt-free prioritized weights (`rm.prioritized`,
        Mao et al. 2025), plus beta times the contrastive term (`rm.contrastive`, Wang et
        al. 2024). With `rm.meta.enabled` its gradient is taken at MetaRM's ascended
        parameters (`_meta_backward`).

        Args:
            batch: P pairs (see the module docstring); `strength` (P,) is read when the loss
                needs it, `margin` (P,) only when `rm.margin` is set.
            meta: P' prompts x k responses (see the module docstring); required with
                `rm.meta.enabled`, ignored otherwise.

        Returns:
            `rm/loss` (the BT part), `rm/accuracy` (against the dataset labels, before any
            flip), `rm/margin` (mean chosen - rejected score), `rm/flipped` (share of
            flipped labels), `rm/lr`, `rm/grad_norm`, `timing/step`; with prioritization
            also `rm/prompt_free_gap` (mean dr2) and `rm/weight_max` (largest weight x P);
            with a contrastive term `rm/contrastive_loss`, `rm/representation_alignment`,
            `rm/uniformity`; with MetaRM `rm/meta_difference` (J before the ascent),
            `rm/meta_difference_after` (J at theta') and `rm/meta_grad_norm`.

        Raises:
            ValueError: If MetaRM is on and `meta` is None.
        """
        start = time.perf_counter()
        self.engine.train()
        if self.rm_cfg.meta.enabled:
            if meta is None:
                raise ValueError(
                    "rm.meta.enabled: train_step needs a meta batch (data.meta_responses_path)"
                )
            metrics = self._meta_backward(batch, meta)
        else:
            loss, metrics = self._loss(batch)
            self.engine.backward(loss)
        self.engine.step()
        grad_norm = self.engine.get_global_grad_norm()
        return metrics | {
            "rm/lr": float(self.engine.get_lr()[0]),
            "rm/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
            "timing/step": time.perf_counter() - start,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Full reward-model weights on CPU (collective under ZeRO-3), without SwAV's
        prototypes: they are training state, kept in the engine checkpoints only."""
        weights = full_state_dict(self.engine)
        weights.pop(PROTOTYPES_KEY, None)
        return weights

    @torch.no_grad()
    def margins(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(P,) float32 chosen minus rejected scores, without gradients (a collective under
        ZeRO-3)."""
        self.engine.eval()
        chosen, rejected = self._scores(batch)
        return (chosen - rejected).float()

    @torch.no_grad()
    def evaluate(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Accuracy and score statistics on P held-out pairs (a collective under ZeRO-3).

        Returns:
            `correct` (pairs whose chosen response scores strictly higher), `pairs` (P),
            and over the 2P responses `responses`, `score_sum` and `score_sq_sum`, as floats
            so callers can sum them over ranks.
        """
        self.engine.eval()
        chosen, rejected = (s.double() for s in self._scores(batch))
        scores = torch.cat([chosen, rejected])
        return {
            "correct": float((chosen > rejected).sum()),
            "pairs": float(chosen.shape[0]),
            "responses": float(scores.shape[0]),
            "score_sum": float(scores.sum()),
            "score_sq_sum": float((scores * scores).sum()),
        }
