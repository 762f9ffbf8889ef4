"""Ray job entrypoint for iterative RLHF rounds (samples -> RM update -> PPO, R rounds).

    python jobs/iterate.py --config jobs/configs/iterate_toy.yaml iterate.rounds=2
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/iterate.py --config jobs/configs/iterate_toy.yaml run.output_dir=/shared/runs
"""

import sys

from ray_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main(["iterate", *sys.argv[1:]]))
