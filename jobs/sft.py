"""Ray job entrypoint for SFT.

python jobs/sft.py --config jobs/configs/sft_toy.yaml sft.steps=200
ray job submit --working-dir . -- python jobs/sft.py --config jobs/configs/sft_toy.yaml
"""

import sys

from ray_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main(["sft", *sys.argv[1:]]))
