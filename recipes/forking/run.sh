#!/usr/bin/env bash
# Forking tokens on GRPO at the EchoRL authors' setting; EchoRL is not combined with it (ECHO=on is
# refused at start-up), so ECHO defaults to off here.
# Usage: recipes/forking/run.sh [hydra overrides]   (environment: scripts/launch_common.sh)
set -euo pipefail
export ECHO="${ECHO:-off}"
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/launch_common.sh"
echorl_launch forking "$@"
