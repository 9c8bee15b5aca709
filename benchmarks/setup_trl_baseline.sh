#!/usr/bin/env bash
# Create .venv-trl011: a clean virtual environment holding trl==0.11.4 (the last trl with seq2seq
# PPO), used only as the baseline of benchmarks/ppo_step.py. It cannot live in the main environment:
# trl 0.11.4 and trl 1.x are the same package.
#
# The other libraries get the *same versions as the main environment* (read from it), so that the
# benchmark compares the two PPO implementations and not two versions of transformers or torch.
# trl 0.11.4 itself is installed with --no-deps (its pins predate transformers 5.x), plus the few
# packages it imports at run time (rich, tyro and tyro's own dependencies).
#
# Usage (from the repository root):   bash benchmarks/setup_trl_baseline.sh
#   MAIN_PYTHON=python3.11  the interpreter of the main environment (default: python)
#   VENV=.venv-trl011       where to create the venv
set -euo pipefail
cd "$(dirname "$0")/.."

MAIN_PYTHON=${MAIN_PYTHON:-python}
VENV=${VENV:-.venv-trl011}

# Version of a package in the main environment, or the fallback given as $2.
main_version() {
    "$MAIN_PYTHON" - "$1" "$2" <<'EOF'
import importlib.metadata as m, sys
try:
    print(m.version(sys.argv[1]).split("+")[0])
except m.PackageNotFoundError:
    print(sys.argv[2])
EOF
}

TORCH=2.13.0  # on the course machines this exact version is a CPU wheel on local disk
TRANSFORMERS=$(main_version transformers 5.24.0)
PEFT=$(main_version peft 0.21.2)
ACCELERATE=$(main_version accelerate 1.15.0)
DATASETS=$(main_version datasets 5.2.0)
TOKENIZERS=$(main_version tokenizers 0.23.3)
SAFETENSORS=$(main_version safetensors 0.8.0)
SENTENCEPIECE=$(main_version sentencepiece 0.2.3)
NUMPY=$(main_version numpy 2.4.6)
HUB=$(main_version huggingface_hub 2.4.0)

"$MAIN_PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install --quiet --upgrade pip
# torch first and pinned: a bare `torch` would pull a multi-GB CUDA build.
$PIP install --quiet "torch==$TORCH"
$PIP install --quiet "transformers==$TRANSFORMERS" "peft==$PEFT" "accelerate==$ACCELERATE" \
    "datasets==$DATASETS" "tokenizers==$TOKENIZERS" "safetensors==$SAFETENSORS" \
    "sentencepiece==$SENTENCEPIECE" "numpy==$NUMPY" "huggingface_hub==$HUB"
# trl 0.11.4 without its (outdated) dependency pins, plus what it imports at run time:
# rich (trl.trainer.utils) and tyro (trl.trainer.ppo_config) with tyro's dependencies.
$PIP install --quiet --no-deps "trl==0.11.4"
$PIP install --quiet rich tyro
# Our package, so the benchmark worker can import rlhf_helpers in this venv too.
$PIP install --quiet --no-deps -e .

"$VENV/bin/python" - <<'EOF'
import importlib.metadata as m
for name in ("torch", "transformers", "peft", "accelerate", "datasets", "trl", "tyro", "rich"):
    print(f"{name:13s} {m.version(name)}")
EOF
echo "ready: $VENV (run: python benchmarks/ppo_step.py)"
