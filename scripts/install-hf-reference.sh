#!/usr/bin/env bash
# Creates the reference Python environment that the Hugging Face parity scripts run in
# (check_peft_interop.py, check_hf_export.py, ...): a venv with CPU torch, transformers, peft,
# safetensors, sacrebleu, rouge-score and seqeval. The venv lives at $HF_REF_VENV (default
# ~/.cache/lmforge/hf-ref). Torch comes from the small CPU-only wheel index when that host answers,
# otherwise from plain PyPI (a much larger download, with CUDA libraries). Idempotent: does nothing
# when the venv already imports torch, transformers and peft. Prints the venv's python at the end.
set -euo pipefail

VENV="${HF_REF_VENV:-$HOME/.cache/lmforge/hf-ref}"
PY="$VENV/bin/python"

have_all() {
  [ -x "$PY" ] && "$PY" -c 'import torch, transformers, peft, seqeval' >/dev/null 2>&1
}
if have_all; then
  echo "$PY"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
mkdir -p "$(dirname "$VENV")"
[ -x "$PY" ] || "$PYTHON" -m venv "$VENV"
"$PY" -m pip install -q --upgrade pip

if ! "$PY" -m pip install -q --retries 1 --timeout 30 \
    --index-url https://download.pytorch.org/whl/cpu torch; then
  echo "install-hf-reference.sh: CPU wheel index unreachable; installing torch from PyPI" >&2
  "$PY" -m pip install -q torch
fi
"$PY" -m pip install -q numpy transformers peft safetensors sacrebleu rouge-score seqeval

have_all
echo "$PY"
