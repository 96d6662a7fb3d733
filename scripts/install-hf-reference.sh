#!/usr/bin/env bash
# Creates the reference Python environment that the Hugging Face parity scripts run in
# (check_peft_interop.py, check_hf_export.py, ...): a venv with CPU torch, transformers, peft,
# safetensors, sacrebleu, rouge-score and seqeval. The venv lives at $HF_REF_VENV (default
# ~/.cache/lmforge/hf-ref). Torch comes from the small CPU-only wheel index when that host answers,
# otherwise from plain PyPI (a much larger download, with CUDA libraries). Idempotent: does nothing
# when the venv already imports torch, transformers and peft. Prints the venv's python at the end.
#
# With --transformers4 (or HF_REF_TRANSFORMERS4=1) it also installs transformers 4.46.3 with
# `pip install --target` into $HF_REF_HF4 (default ~/.cache/lmforge/hf4), for the scripts that need
# the 4.x models (transformers 5's BERT takes no past_key_values, so PEFT prefix tuning cannot run on
# it; see make_prefix_fixtures.py). Run the venv's python with PYTHONPATH set to that folder to get
# it. Then the venv's python is printed first and that folder last:
#
#     out=$(bash scripts/install-hf-reference.sh --transformers4)
#     PY=$(echo "$out" | head -n 1); HF4=$(echo "$out" | tail -n 1)
set -euo pipefail

VENV="${HF_REF_VENV:-$HOME/.cache/lmforge/hf-ref}"
PY="$VENV/bin/python"
HF4="${HF_REF_HF4:-$HOME/.cache/lmforge/hf4}"
WANT_HF4="${HF_REF_TRANSFORMERS4:-0}"
for arg in "$@"; do
  case "$arg" in
    --transformers4) WANT_HF4=1 ;;
    *) echo "install-hf-reference.sh: unknown option $arg (known: --transformers4)" >&2; exit 2 ;;
  esac
done

have_all() {
  [ -x "$PY" ] && "$PY" -c 'import torch, transformers, peft, seqeval' >/dev/null 2>&1
}
have_hf4() {
  PYTHONPATH="$HF4" "$PY" -c 'import transformers; assert transformers.__version__ == "4.46.3"' >/dev/null 2>&1
}
install_hf4() {
  if ! have_hf4; then
    mkdir -p "$HF4"
    "$PY" -m pip install -q --upgrade --target "$HF4" \
      "transformers==4.46.3" "tokenizers<0.21" "huggingface_hub<1.0"
    have_hf4
  fi
}

if ! have_all; then
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
fi
echo "$PY"
if [ "$WANT_HF4" = 1 ]; then
  install_hf4
  echo "$HF4"
fi
