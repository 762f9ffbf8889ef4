"""Evidence job for contrastive rewards: PPO with raw vs contrastive RM rewards on the toy
world, several seeds; writes report.md + contrastive.png into the run dir.

python jobs/contrastive_evidence.py --config jobs/configs/contrastive_evidence.yaml
"""

import argparse
import sys

from ray_rlhf.loops.contrastive_evidence import load_evidence_config, run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="jobs/configs/contrastive_evidence.yaml")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides")
    args = parser.parse_args()
    run(*load_evidence_config(args.config, args.overrides))
    sys.exit(0)
