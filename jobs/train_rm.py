"""Ray job entrypoint for Bradley-Terry reward-model training.

python jobs/train_rm.py --config jobs/configs/rm_toy.yaml rm.steps=300
ray job submit --working-dir . -- python jobs/train_rm.py --config jobs/configs/rm_toy.yaml
"""

import sys

from ray_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-rm", *sys.argv[1:]]))
