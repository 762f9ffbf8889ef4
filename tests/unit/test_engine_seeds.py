from ray_rlhf.rollout.engine import prompt_seeds


def test_base_seed_gives_disjoint_streams():
    # vLLM samples j of a prompt with prompt_seed + j: streams 10..13, 14..17, 18..21.
    assert prompt_seeds(10, 3, 4) == [10, 14, 18]
    streams = [s + j for s in prompt_seeds(10, 3, 4) for j in range(4)]
    assert len(set(streams)) == len(streams)


def test_explicit_and_missing_seeds_pass_through():
    assert prompt_seeds([5, 1], 2, 3) == [5, 1]
    assert prompt_seeds(None, 2, 3) == [None, None]
