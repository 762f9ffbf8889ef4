"""Ray job entrypoint for the offline baseline sampling of contrastive rewards.

python jobs/sample_baselines.py --config jobs/configs/baselines_toy.yaml model.path=runs/sft/policy
RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
    python jobs/sample_baselines.py --config jobs/configs/baselines_toy.yaml \
    model.path=/abs/shared/runs/sft/policy run.output_dir=/abs/shared/runs
"""

import sys

from ray_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample-baselines", *sys.argv[1:]]))
