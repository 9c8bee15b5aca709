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

__version__ = "0.1.0"
