"""Checkpoint completeness from the per-rank manifests (`distributed/checkpointing.py`): what
a restarted worker group uses when Ray Train has not registered the newest checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ray_rlhf.distributed.checkpointing import (
    _first_cause,
    _write_manifest,
    is_complete,
    newest_complete_checkpoint,
)


def _checkpoint(storage: Path, name: str, world: int = 2) -> Path:
    """A checkpoint dir as Ray Train assembles it: every rank's files and manifest."""
    out = storage / name
    for rank in range(world):
        rank_dir = storage / f".rank{rank}_{name}"  # each rank writes its own temp dir
        (rank_dir / "policy").mkdir(parents=True)
        (rank_dir / "policy" / f"shard_{rank}.pt").write_bytes(b"x" * (10 + rank))
        if rank == 0:
            (rank_dir / "state.json").write_text('{"iteration": 2}')
        _write_manifest(rank_dir, rank, world)
        for f in rank_dir.rglob("*"):
            if f.is_file():
                target = out / f.relative_to(rank_dir)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(f.read_bytes())
    return out


def test_a_checkpoint_with_every_rank_and_file_is_complete(tmp_path):
    ckpt = _checkpoint(tmp_path, "checkpoint_2026-11-30_20-58-39.318311")
    assert sorted(p.name for p in (ckpt / "manifest").iterdir()) == ["rank_0.json", "rank_1.json"]
    assert is_complete(ckpt)


def test_a_short_file_a_missing_file_or_a_missing_rank_is_incomplete(tmp_path):
    short = _checkpoint(tmp_path, "checkpoint_a")
    (short / "policy" / "shard_1.pt").write_bytes(b"x" * 5)  # upload cut short
    missing = _checkpoint(tmp_path, "checkpoint_b")
    (missing / "state.json").unlink()
    no_rank = _checkpoint(tmp_path, "checkpoint_c")
    (no_rank / "manifest" / "rank_1.json").unlink()
    legacy = tmp_path / "checkpoint_d"  # written before manifests existed
    legacy.mkdir()
    (legacy / "state.json").write_text("{}")
    assert [is_complete(d) for d in (short, missing, no_rank, legacy)] == [False] * 4


def test_newest_complete_checkpoint_skips_an_incomplete_newer_one(tmp_path):
    older = _checkpoint(tmp_path, "checkpoint_2026-11-30_20-58-39.318311")
    newer = _checkpoint(tmp_path, "checkpoint_2026-11-30_20-58-53.790593")
    assert newest_complete_checkpoint(tmp_path) == newer
    (newer / "policy" / "shard_0.pt").unlink()
    assert newest_complete_checkpoint(tmp_path) == older
    (older / "manifest" / "rank_0.json").unlink()
    assert newest_complete_checkpoint(tmp_path) is None


def test_a_state_dict_mismatch_is_named_by_its_first_tensor():
    """torch lists one line per mismatched tensor under a header line; the checkpoint error
    names the first and counts the rest."""
    with pytest.raises(RuntimeError) as caught:
        torch.nn.Linear(2, 3).load_state_dict({"weight": torch.zeros(4, 2), "bias": torch.zeros(4)})
    assert _first_cause(caught.value) == (
        "Error(s) in loading state_dict for Linear: size mismatch for weight: copying a param "
        "with shape torch.Size([4, 2]) from checkpoint, the shape in current model is "
        "torch.Size([3, 2]). (and 1 more)"
    )
    assert _first_cause(KeyError("policy")) == "'policy'"
