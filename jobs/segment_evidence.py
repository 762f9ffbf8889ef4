"""Evidence job for segment-level rewards: bandit vs segment vs token PPO on the toy world.

python jobs/segment_evidence.py --config jobs/configs/segment_evidence.yaml [--seeds 0 1 2]
    [--docs docs/evidence] [section.key=value ...]
"""

import argparse
import sys
from pathlib import Path

from ray_rlhf.config import load_config
from ray_rlhf.loops import segment_evidence

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/configs/segment_evidence.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(segment_evidence.SEEDS))
    parser.add_argument("--docs", default="docs/evidence", help="copy report + PNG here")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    segment_evidence.run(cfg, tuple(args.seeds), Path(args.docs) if args.docs else None)
    sys.exit(0)
