#!/usr/bin/env bash
# The Continue CLI (`cn`, a real Continue client that reads the same config.yaml as the editor
# extension) and Continue's config schema package (`@continuedev/config-yaml`, used by the
# continue role to validate a rendered config.yaml), pinned, into $TOOLKIT_CACHE/continue-cli-<key>.
# The stack scenario bind-mounts this folder and the host's node into the test container.
set -euo pipefail
CACHE=${TOOLKIT_CACHE:-/var/cache/toolkit}
CLI_VERSION=1.5.47
CONFIG_YAML_VERSION=1.42.0
key=$(printf '%s\n%s\n%s\n' "$(sha256sum "$0" | cut -c1-64)" "$CLI_VERSION" "$CONFIG_YAML_VERSION" | sha256sum | cut -c1-12)
dir="$CACHE/continue-cli-$key"
if [ ! -f "$dir/.complete" ]; then
  command -v npm >/dev/null || { echo "npm is needed (node 20)"; exit 1; }
  rm -rf "$dir"; mkdir -p "$dir"
  echo '{"name": "toolkit-continue-cli", "private": true}' > "$dir/package.json"
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error \
    "@continuedev/cli@$CLI_VERSION" "@continuedev/config-yaml@$CONFIG_YAML_VERSION"
  "$dir/node_modules/.bin/cn" --version
  touch "$dir/.complete"
fi
ln -sfn "$dir" "$CACHE/continue-cli"
echo "Continue CLI $CLI_VERSION: $CACHE/continue-cli/node_modules/.bin/cn"
