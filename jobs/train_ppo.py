"""Ray job entrypoint for PPO (SFT first on the toy world when `model.path` is unset).

    python jobs/train_ppo.py --config jobs/configs/ppo_toy.yaml ppo.iterations=10
    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train_ppo.py --config jobs/configs/ppo_toy.yaml run.output_dir=/shared/runs
"""

import sys

from ray_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main(["ppo", *sys.argv[1:]]))
