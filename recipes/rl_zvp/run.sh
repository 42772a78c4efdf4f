#!/usr/bin/env bash
# RL-ZVP on GRPO at the EchoRL authors' setting; ECHO=on adds EchoRL, ECHO=off trains the plain method.
# Usage: ECHO=on|off recipes/rl_zvp/run.sh [hydra overrides]   (environment: scripts/launch_common.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/launch_common.sh"
echorl_launch rl_zvp "$@"
