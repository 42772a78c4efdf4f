#!/usr/bin/env bash
# GRPO + VAPO's positive-example NLL at the EchoRL authors' setting; ECHO=off trains plain GRPO.
# Usage: ECHO=on|off recipes/positive_nll/run.sh [hydra overrides]   (environment: scripts/launch_common.sh)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/launch_common.sh"
echorl_launch positive_nll "$@"
