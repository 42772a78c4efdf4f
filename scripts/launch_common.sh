# shellcheck shell=bash
# Shared launch logic of every recipe (sourced by recipes/<method>/run.sh; not run directly).
#
# A recipe run is: python -m echorl.main with echorl/config/echorl_trainer.yaml as the primary
# config, the recipes folder added to Hydra's search path, `+<method>=<method>` selecting
# recipes/<method>/<method>.yaml (which pulls in recipes/paper_setting.yaml), then the
# environment's overrides, then the caller's arguments ("$@" wins over everything).
#
# Environment (defaults in brackets):
#   ECHO             on | off: EchoRL on, or the plain base method                          [on]
#   DATA_DIR         folder of scripts/prepare_data.py outputs                  [$HOME/data/echorl]
#   TRAIN_FILES      training parquet                       [$DATA_DIR/openr1_math_46k.parquet]
#   VAL_FILES        validation parquet                             [$DATA_DIR/math500.parquet]
#   MODEL_PATH       HF id or local folder                                [Qwen/Qwen2.5-Math-7B]
#   NNODES, N_GPUS_PER_NODE                                                                [1, 8]
#   PROJECT, EXPERIMENT   tracking names                      [echorl, <method>-echo_<ECHO>]
#   CKPT_DIR         absolute folder on storage every node sees (a relative path would resolve
#                    per Ray process, e.g. in a job's temporary folder, and resume would find
#                    nothing); checkpoints go to $CKPT_DIR/<PROJECT>/<EXPERIMENT> [$HOME/checkpoints/echorl]
#   CKPT_KEEP        newest actor (and critic) checkpoints kept on disk                        [3]
#   PYTHON           interpreter                                                        [python]
#   DRY_RUN=1        print the final command (one argument per line) and exit                 [0]

echorl_launch() {
  local method="$1"; shift
  local root; root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local recipes="$root/recipes"
  if [[ ! -f "$recipes/$method/$method.yaml" ]]; then
    echo "echorl_launch: no recipe config $recipes/$method/$method.yaml" >&2
    return 2
  fi

  local echo_mode="${ECHO:-on}" enable
  case "$echo_mode" in
    on) enable=true ;;
    off) enable=false ;;
    *) echo "echorl_launch: ECHO must be 'on' or 'off', got '$echo_mode'" >&2; return 2 ;;
  esac

  local ckpt_dir="${CKPT_DIR:-$HOME/checkpoints/echorl}" keep="${CKPT_KEEP:-3}"
  if [[ "$ckpt_dir" != /* ]]; then
    echo "echorl_launch: CKPT_DIR must be an absolute path on storage every node sees, got '$ckpt_dir'" >&2
    return 2
  fi
  if [[ ! "$keep" =~ ^[1-9][0-9]*$ ]]; then
    echo "echorl_launch: CKPT_KEEP must be a positive number of checkpoints, got '$keep'" >&2
    return 2
  fi
  local project="${PROJECT:-echorl}" experiment="${EXPERIMENT:-$method-echo_$echo_mode}"
  local data_dir="${DATA_DIR:-$HOME/data/echorl}"
  local cmd=(
    "${PYTHON:-python}" -m echorl.main
    # echorl_trainer.yaml's own search path (verl's configs) plus the recipes folder.
    "hydra.searchpath=[pkg://verl.trainer.config,file://$recipes]"
    "+$method=$method"
    "echorl.enable=$enable"
    "data.train_files=${TRAIN_FILES:-$data_dir/openr1_math_46k.parquet}"
    "data.val_files=${VAL_FILES:-$data_dir/math500.parquet}"
    "actor_rollout_ref.model.path=${MODEL_PATH:-Qwen/Qwen2.5-Math-7B}"
    "trainer.nnodes=${NNODES:-1}"
    "trainer.n_gpus_per_node=${N_GPUS_PER_NODE:-8}"
    "trainer.project_name=$project"
    "trainer.experiment_name=$experiment"
    "trainer.default_local_dir=${ckpt_dir%/}/$project/$experiment"
    "trainer.max_actor_ckpt_to_keep=$keep"
    "trainer.max_critic_ckpt_to_keep=$keep"
    "$@"
  )
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%s\n' "${cmd[@]}"
    return 0
  fi
  cd "$root"
  exec "${cmd[@]}"
}
