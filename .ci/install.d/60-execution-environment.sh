#!/usr/bin/env bash
# The AWX execution environment (execution-environment.yml) built once per recipe with ansible-builder
# from the local test image (20-test-image.sh), so podman's layer cache holds every layer that needs a
# registry (apt's python3-pip and bindep packages, pip's ansible-core/runner and Python deps).
# tests/test_execution_environment.py then rebuilds it with the network off: only the wheel's layers.
# The recipe is this file, execution-environment.yml and the base image's id; the wheel is not in it.
set -euo pipefail
cd "$(dirname "$0")/../.."
IMAGE=localhost/toolkit-ee
base=$(podman image inspect -f '{{.Id}}' localhost/toolkit-systemd:current)
recipe=$(cat "$0" execution-environment.yml <(echo "$base") | sha256sum | cut -c1-12)

if podman image exists "$IMAGE:$recipe"; then
  echo "execution environment $IMAGE:$recipe cached"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel -q --no-deps --no-index --no-build-isolation -w "$work/dist" .
cp execution-environment.yml "$work/"
echo "building $IMAGE:$recipe with ansible-builder (about 4 minutes)"
(cd "$work" && "$OLDPWD/.venv/bin/ansible-builder" build -f execution-environment.yml -c context \
   -t "$IMAGE:$recipe" --container-runtime podman -v 2 >"$work/build.log" 2>&1) \
  || { tail -30 "$work/build.log"; exit 1; }
# Older recipes' images go; their layers would never be hit again.
podman images --format '{{.Repository}}:{{.Tag}}' | grep "^$IMAGE:" | grep -v ":$recipe\$" | xargs -r -n1 podman rmi >/dev/null 2>&1 || true
echo "built $IMAGE:$recipe"
