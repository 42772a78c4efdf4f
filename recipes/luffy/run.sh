#!/usr/bin/env bash
# LUFFY at the EchoRL authors' setting; ECHO=on adds EchoRL, ECHO=off trains the plain method.
# Usage: ECHO=on|off recipes/luffy/run.sh [hydra overrides]   (environment: scripts/launch_common.sh)
# LUFFY's model config (rope_theta 40000, 16384 positions), written once:
#   python scripts/prepare_model.py --model Qwen/Qwen2.5-Math-7B --out "$HOME/models/qwen2.5-math-7b-luffy"
#   MODEL_PATH="$HOME/models/qwen2.5-math-7b-luffy" ECHO=on recipes/luffy/run.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/launch_common.sh"
echorl_launch luffy "$@"
