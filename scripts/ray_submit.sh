#!/usr/bin/env bash
# Submit a recipe to an existing Ray cluster with `ray job submit` (docs/cluster.md).
#
#   RAY_ADDRESS=http://head:8265 RECIPE=grpo ECHO=on scripts/ray_submit.sh [hydra overrides]
#
# The repository is uploaded as the job's working_dir and the recipe's run.sh runs there as the
# job entrypoint (the Ray driver). Run outputs stay out of the upload (Ray's runtime_env `excludes`,
# gitignore patterns matched at any depth): .git, .venv, wandb/, outputs/, checkpoints/ (verl's
# default relative checkpoint folder), CKPT_DIR and WANDB_DIR when they lie inside the repository,
# parquet and safetensors files. The cluster's image must have verl[vllm]==0.9.1 and echorl
# installed (docker/Dockerfile): EchoRL's verl plugin is found through the installed package.
# Environment: RAY_ADDRESS (dashboard address) [http://127.0.0.1:8265], RECIPE [grpo], ECHO,
# DATA_DIR / TRAIN_FILES / VAL_FILES / MODEL_PATH / NNODES / N_GPUS_PER_NODE / CKPT_DIR / CKPT_KEEP as in
# scripts/launch_common.sh (paths as seen by the cluster nodes), SUBMIT_ID (job id) [unset],
# NO_WAIT=1 (return after submitting), DRY_RUN=1 (print the ray command and exit).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
RECIPE="${RECIPE:-grpo}"
ECHO="${ECHO:-on}"
if [[ ! -x "$ROOT/recipes/$RECIPE/run.sh" ]]; then
  echo "ray_submit: unknown recipe '$RECIPE' (choose one of: $(ls "$ROOT/recipes" | grep -v '\.' | tr '\n' ' '))" >&2
  exit 2
fi

if [[ -n "${CKPT_DIR:-}" && "$CKPT_DIR" != /* ]]; then
  echo "ray_submit: CKPT_DIR must be an absolute path on storage every node sees, got '$CKPT_DIR'" >&2
  exit 2
fi

# Runtime env of the job: the uploaded repository and the environment its driver sees (the
# launcher's variables are forwarded when set), encoded by Python's json module so that values
# with quotes, spaces or backslashes arrive intact. It goes to `ray job submit` as a file readable
# only by this user (removed afterwards), not on the command line, where `ps` would show secrets
# such as WANDB_API_KEY to every user of the machine.
forward=(DATA_DIR TRAIN_FILES VAL_FILES MODEL_PATH NNODES N_GPUS_PER_NODE PROJECT EXPERIMENT CKPT_DIR CKPT_KEEP
         WANDB_API_KEY WANDB_MODE WANDB_BASE_URL WANDB_DIR HF_HOME HF_HUB_OFFLINE ECHORL_VERIFY_TIMEOUT_S ECHORL_VERIFY_WORKERS)
SECRETS="WANDB_API_KEY"
py="$(command -v python3 || command -v python)"
env_file="$(mktemp "${TMPDIR:-/tmp}/echorl-runtime-env.XXXXXX")"
chmod 600 "$env_file"
trap 'rm -f "$env_file"' EXIT
redacted="$(SUBMIT_ECHO="$ECHO" SUBMIT_ROOT="$ROOT" SUBMIT_FILE="$env_file" SUBMIT_SECRETS="$SECRETS" "$py" - "${forward[@]}" <<'PY'
import json, os, sys

env_vars = {"ECHO": os.environ["SUBMIT_ECHO"], "HYDRA_FULL_ERROR": "1", "TOKENIZERS_PARALLELISM": "false"}
env_vars.update({name: os.environ[name] for name in sys.argv[1:] if os.environ.get(name)})
root = os.path.realpath(os.environ["SUBMIT_ROOT"])
excludes = ["/.git/", "/.venv/", "wandb/", "outputs/", "checkpoints/", "*.parquet", "*.safetensors"]
for name in ("CKPT_DIR", "WANDB_DIR"):  # run folders inside the repository: not uploaded either
    folder = os.path.realpath(env_vars[name]) if env_vars.get(name) else None
    if folder and (folder + os.sep).startswith(root + os.sep) and folder != root:
        excludes.append("/" + os.path.relpath(folder, root) + "/")
runtime_env = {"working_dir": os.environ["SUBMIT_ROOT"], "excludes": excludes, "env_vars": env_vars}
with open(os.environ["SUBMIT_FILE"], "w") as fh:  # JSON is YAML: `ray job submit --runtime-env FILE`
    json.dump(runtime_env, fh)
secrets = os.environ["SUBMIT_SECRETS"].split()
shown = {k: ("<redacted>" if k in secrets else v) for k, v in env_vars.items()}
print(json.dumps({**runtime_env, "env_vars": shown}))
PY
)"

cmd=(ray job submit --address "$RAY_ADDRESS" --runtime-env "$env_file")
if [[ -n "${SUBMIT_ID:-}" ]]; then cmd+=(--submission-id "$SUBMIT_ID"); fi
if [[ "${NO_WAIT:-0}" == 1 ]]; then cmd+=(--no-wait); fi
cmd+=(-- bash "recipes/$RECIPE/run.sh" "$@")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
  printf '%s\n' "${cmd[@]}"
  echo "# runtime env (secrets redacted):"
  echo "$redacted"
  exit 0
fi
"${cmd[@]}"
