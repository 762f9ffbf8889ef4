"""Issue-4 evidence: strength losses and the prioritized RM on the toy world, 3 seeds.

python jobs/rm_evidence.py --config jobs/configs/rm_evidence.yaml
ray job submit --working-dir . -- python jobs/rm_evidence.py \
    --config jobs/configs/rm_evidence.yaml run.output_dir=/mnt/shared/runs
"""

import sys

from ray_rlhf.loops.rm_evidence import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
