"""Write the procedural demo data set (MVTec layout) to a folder: python scripts/make_demo.py OUT [--seed 7].

The app does not need this (it generates the demo project at first start); it is for looking at the images or
using them from the CLI (`python -m recon_core train OUT ...`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from recon_core.demo import write_demo_dataset

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(write_demo_dataset(args.out, seed=args.seed))
