#!/usr/bin/env bash
# REINFORCE++ (-baseline) at the EchoRL authors' setting; ECHO=on adds EchoRL, ECHO=off trains the plain method.
# Usage: ECHO=on|off recipes/reinforce_pp/run.sh [hydra overrides]   (environment: scripts/launch_common.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/launch_common.sh"
echorl_launch reinforce_pp "$@"
