"""Ray job entrypoint: how much of a reward model's decisions are prompt-free.

python jobs/analyze_rm.py reward.model_path=runs/rm/reward_model
python jobs/analyze_rm.py reward.model_path=DIR data.preferences_path=pairs.jsonl
"""

import sys

from ray_rlhf.cli import main

if __name__ == "__main__":
    sys.exit(main(["analyze-rm", *sys.argv[1:]]))
