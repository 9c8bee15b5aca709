"""rlhf_helpers: all the logic of the RLHF course, one module per stage.

The notebooks in ``notebooks/`` tell the story and call these functions; the command line
(``python -m rlhf_helpers``) runs the same functions headless.
"""

import os

# Hugging Face libraries print download/loading bars for every model load: noise in a course
# notebook (and they flood executed notebooks). Our own long loops have their own tqdm bars.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

# Same seed => same numbers, whatever ran before in the process. Intel MKL (torch's CPU matrix
# library) picks kernels by the memory alignment of each call's arrays, so the float sums of the
# very same training depended on what the process had allocated earlier: notebook 02 (which builds
# a LoRA model first) and `python -m rlhf_helpers sft` trained SFT policies with ROUGE-L 0.416 and
# 0.443. MKL's conditional numerical reproducibility mode fixes the code path. AVX512 is the branch
# MKL takes here anyway (same numbers as before, same speed); on CPUs without it MKL uses AUTO
# (its usual dispatch with deterministic reductions). Set MKL_CBWR yourself to choose another.
os.environ.setdefault("MKL_CBWR", "AVX512")

__version__ = "0.1.0"
