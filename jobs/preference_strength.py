"""Ray job entrypoint: train an RM ensemble and annotate every pair with its strength.

python jobs/preference_strength.py --config jobs/configs/strength_toy.yaml
ray job submit --working-dir . -- python jobs/preference_strength.py \
    --config jobs/configs/strength_toy.yaml run.output_dir=/mnt/shared/runs
"""

import sys

from ray_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main(["preference-strength", *sys.argv[1:]]))
