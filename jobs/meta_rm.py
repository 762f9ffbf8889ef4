"""Ray job entrypoint for the meta-learned reward model (docs/meta_rm.md).

python jobs/meta_rm.py --config jobs/configs/meta_rm_toy.yaml meta.outer_steps=20
ray job submit --working-dir . -- python jobs/meta_rm.py --config jobs/configs/meta_rm_toy.yaml
"""

import sys

from ray_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main(["meta-rm", *sys.argv[1:]]))
