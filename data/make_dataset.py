"""Regenerate the course dataset in this folder: ``python data/make_dataset.py [--seed 0]``.

The generator lives in ``rlhf_helpers.course_data`` so tests can check that the committed files
are exactly what the seed produces.
"""

import argparse
from pathlib import Path

from rlhf_helpers.course_data import write_course_dataset

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = write_course_dataset(Path(__file__).resolve().parent, seed=args.seed)
    print("wrote", ", ".join(f"{k}: {v}" for k, v in sizes.items()))
