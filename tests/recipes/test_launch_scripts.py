"""Launchers for a GPU cluster, run for real in their DRY_RUN modes: an absolute shared checkpoint
folder with a keep-limit, `ray job submit`'s runtime env as real JSON (run outputs left out of the
upload), and the SLURM script's node, address and GPU/CPU resolution, passed to every `srun ray
start` step (with stand-ins for SLURM's srun/scontrol, which this machine lacks)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[2]
LAUNCH_VARS = ("ECHO", "DATA_DIR", "TRAIN_FILES", "VAL_FILES", "MODEL_PATH", "NNODES", "N_GPUS_PER_NODE", "EXPERIMENT",
               "PROJECT", "PYTHON", "CKPT_DIR", "CKPT_KEEP", "RECIPE", "HEAD_IP", "GPUS_PER_NODE", "CPUS_PER_NODE",
               "WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR", "HF_HOME", "HF_HUB_OFFLINE", "ECHORL_VERIFY_TIMEOUT_S",
               "ECHORL_VERIFY_WORKERS")


def run(script: Path, env: dict, *args: str, path_prefix: Path | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    full.update({"DRY_RUN": "1", "HOME": "/home/u", **env})
    if path_prefix is not None:
        full["PATH"] = f"{path_prefix}:{full['PATH']}"
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=full, timeout=60,
                          cwd=ROOT)


def _value(lines: list[str], key: str) -> str:
    hits = [line.split("=", 1)[1] for line in lines if line.startswith(key + "=")]
    assert len(hits) == 1, (key, lines)
    return hits[0]


# ---------------------------------------------------------------------------- checkpoints
def test_checkpoints_go_to_an_absolute_shared_folder_with_a_keep_limit():
    r = run(ROOT / "recipes" / "grpo" / "run.sh", {"CKPT_DIR": "/shared/ckpt/", "CKPT_KEEP": "5", "PROJECT": "p",
                                                   "EXPERIMENT": "grpo-a"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert _value(lines, "trainer.default_local_dir") == "/shared/ckpt/p/grpo-a"
    assert _value(lines, "trainer.max_actor_ckpt_to_keep") == "5"
    assert _value(lines, "trainer.max_critic_ckpt_to_keep") == "5"
    # defaults: under $HOME (absolute), 3 kept
    lines = run(ROOT / "recipes" / "dapo" / "run.sh", {"ECHO": "off"}).stdout.splitlines()
    assert _value(lines, "trainer.default_local_dir") == "/home/u/checkpoints/echorl/echorl/dapo-echo_off"
    assert _value(lines, "trainer.max_actor_ckpt_to_keep") == "3"


def test_checkpoint_keys_reach_verls_config():
    """The dry-run overrides compose with real Hydra into verl's trainer keys (a misspelt key would fail)."""
    from hydra import compose, initialize_config_module

    lines = run(ROOT / "recipes" / "rloo" / "run.sh", {"CKPT_DIR": "/nfs/ck", "CKPT_KEEP": "2"}).stdout.splitlines()
    overrides = lines[lines.index("echorl.main") + 1:]
    with initialize_config_module(config_module="echorl.config", version_base=None):
        cfg = compose(config_name="echorl_trainer", overrides=overrides)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer["default_local_dir"] == "/nfs/ck/echorl/rloo-echo_on"
    assert (trainer["max_actor_ckpt_to_keep"], trainer["max_critic_ckpt_to_keep"]) == (2, 2)
    assert os.path.isabs(trainer["default_local_dir"])


@pytest.mark.parametrize("env,message", [
    ({"CKPT_DIR": "checkpoints"}, "CKPT_DIR must be an absolute path on storage every node sees, got 'checkpoints'"),
    ({"CKPT_DIR": "~/ck"}, "CKPT_DIR must be an absolute path on storage every node sees, got '~/ck'"),
    ({"CKPT_KEEP": "0"}, "CKPT_KEEP must be a positive number of checkpoints, got '0'"),
    ({"CKPT_KEEP": "all"}, "CKPT_KEEP must be a positive number of checkpoints, got 'all'"),
])
def test_bad_checkpoint_settings_are_refused(env, message):
    r = run(ROOT / "recipes" / "gspo" / "run.sh", env)
    assert r.returncode == 2 and message in r.stderr and r.stdout == ""


# ---------------------------------------------------------------------------- ray job submit
def test_ray_submit_runtime_env_is_json_encoded():
    tricky = {"MODEL_PATH": '/models/Qwen "Math" 7B', "EXPERIMENT": "a b\\c $HOME 'x'", "DATA_DIR": "/d/é{}[],:",
              "CKPT_DIR": "/shared/ck", "CKPT_KEEP": "4", "WANDB_MODE": "offline"}
    r = run(ROOT / "scripts" / "ray_submit.sh", {"RECIPE": "cispo", **tricky}, "trainer.total_epochs=1")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    runtime_env = json.loads(lines[lines.index("# runtime env (secrets redacted):") + 1])
    assert runtime_env["working_dir"] == str(ROOT)
    assert runtime_env["env_vars"] == {"ECHO": "on", "HYDRA_FULL_ERROR": "1", "TOKENIZERS_PARALLELISM": "false",
                                       **tricky}
    command = lines[:lines.index("# runtime env (secrets redacted):")]
    assert command[command.index("--") + 1:] == ["bash", "recipes/cispo/run.sh", "trainer.total_epochs=1"]


def test_ray_submit_keeps_secrets_off_the_command_line():
    """WANDB_API_KEY reaches the job through a runtime-env file only this user can read (removed
    after the submit), never through the ray command's arguments."""
    r = run(ROOT / "scripts" / "ray_submit.sh", {"WANDB_API_KEY": "s3cret-key", "MODEL_PATH": "/m"})
    assert r.returncode == 0, r.stderr
    assert "s3cret-key" not in r.stdout and "s3cret-key" not in r.stderr
    lines = r.stdout.splitlines()
    env_file = Path(lines[lines.index("--runtime-env") + 1])
    assert "--runtime-env-json" not in lines and not env_file.exists()  # removed on exit
    shown = json.loads(lines[lines.index("# runtime env (secrets redacted):") + 1])
    assert shown["env_vars"]["WANDB_API_KEY"] == "<redacted>" and shown["env_vars"]["MODEL_PATH"] == "/m"


def test_ray_submit_hands_ray_the_secret_in_a_private_file(tmp_path):
    """A stand-in `ray` on PATH reports what it got: the key is in the file (mode 600), not in argv."""
    fake = tmp_path / "ray"
    fake.write_text('#!/usr/bin/env bash\nwhile [[ $# -gt 0 ]]; do\n  if [[ $1 == --runtime-env ]]; then\n'
                    '    stat -c %a "$2"; cat "$2"; echo; fi\n  echo "ARG $1"; shift\ndone\n')
    fake.chmod(0o755)
    r = run(ROOT / "scripts" / "ray_submit.sh", {"DRY_RUN": "0", "WANDB_API_KEY": "s3cret-key"}, path_prefix=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    at = lines.index("600")  # the file's mode, then its content
    assert json.loads(lines[at + 1])["env_vars"]["WANDB_API_KEY"] == "s3cret-key"
    assert not any("s3cret-key" in line for line in lines if line.startswith("ARG "))


def test_ray_submit_leaves_run_outputs_out_of_the_upload(tmp_path):
    """The printed excludes, applied by Ray's own packaging code (gitignore handling off, so the
    excludes alone decide) to a repository-like tree: sources and recipes are uploaded; wandb and
    output folders (at any depth), verl's default checkpoint folder, a CKPT_DIR and a WANDB_DIR
    inside the repository, parquet and safetensors files are not."""
    import zipfile

    from ray._private.runtime_env.packaging import _zip_files

    repo = tmp_path / "repo"
    kept = ["recipes/grpo/run.sh", "echorl/verl/a.py", "docs/wandb.md", "scripts/outputs.py", "results/r.json"]
    dropped = [".git/HEAD", ".venv/bin/python", "wandb/offline-run-1/run-1.wandb", "echorl/wandb/debug.log",
               "outputs/demo/x.png", "checkpoints/echorl/grpo/global_step_1/model.pt", "runs/ck/p/e/global_step_2/x.pt",
               "runs/wb/wandb/run-2.wandb", "data/train.parquet", "m/model.safetensors"]
    for rel in kept + dropped:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("x")
    for d in ("recipes/grpo", "scripts"):  # ray_submit.sh checks the recipe exists
        (repo / d).mkdir(parents=True, exist_ok=True)
    (repo / "scripts" / "ray_submit.sh").write_text((ROOT / "scripts" / "ray_submit.sh").read_text())
    (repo / "recipes" / "grpo" / "run.sh").write_text("#!/bin/bash\n")
    (repo / "recipes" / "grpo" / "run.sh").chmod(0o755)
    r = run(repo / "scripts" / "ray_submit.sh", {"CKPT_DIR": str(repo / "runs" / "ck"), "WANDB_DIR": str(repo / "runs" / "wb")})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    runtime_env = json.loads(lines[lines.index("# runtime env (secrets redacted):") + 1])
    assert runtime_env["working_dir"] == str(repo) and runtime_env["env_vars"]["WANDB_DIR"] == str(repo / "runs" / "wb")
    _zip_files(str(repo), runtime_env["excludes"], str(tmp_path / "pkg.zip"), include_gitignore=False)
    with zipfile.ZipFile(tmp_path / "pkg.zip") as z:
        names = {n for n in z.namelist() if not n.endswith("/")}
    assert set(kept) <= names, sorted(set(kept) - names)
    assert not names & set(dropped), sorted(names & set(dropped))
    # run folders outside the repository add no pattern
    r = run(ROOT / "scripts" / "ray_submit.sh", {"CKPT_DIR": "/shared/ck", "WANDB_DIR": "/shared/wb"})
    lines = r.stdout.splitlines()
    excludes = json.loads(lines[lines.index("# runtime env (secrets redacted):") + 1])["excludes"]
    assert excludes == ["/.git/", "/.venv/", "wandb/", "outputs/", "checkpoints/", "*.parquet", "*.safetensors"]


def test_ray_submit_refuses_a_relative_checkpoint_folder():
    r = run(ROOT / "scripts" / "ray_submit.sh", {"CKPT_DIR": "ckpt"})
    assert r.returncode == 2 and "CKPT_DIR must be an absolute path" in r.stderr and r.stdout == ""


# ---------------------------------------------------------------------------- SLURM
SBATCH = ROOT / "scripts" / "slurm" / "echorl.sbatch"


@pytest.fixture
def slurm_bin(tmp_path):
    """Stand-ins for SLURM's commands: scontrol lists three nodes; srun logs its arguments and runs the
    command after its options here (so `hostname -I` really runs); getent knows node1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "srun.log"
    (bin_dir / "scontrol").write_text('#!/bin/bash\n[[ "$1 $2 $3" == "show hostnames node[1-3]" ]] || exit 1\n'
                                      'printf "node1\\nnode2\\nnode3\\n"\n')
    (bin_dir / "srun").write_text(
        f'#!/bin/bash\necho "$*" >> {log}\n[[ -n "$SRUN_FAILS" ]] && exit 1\n'
        'while [[ $# -gt 0 ]]; do case "$1" in -w) shift 2 ;; -*) shift ;; *) break ;; esac; done\nexec "$@"\n')
    (bin_dir / "getent").write_text('#!/bin/bash\n[[ "$1 $2" == "hosts node1" ]] && echo "10.1.2.3  node1" && exit 0\n'
                                    'exit 2\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir, log


def _slurm_env(**extra):
    return {"SLURM_JOB_NODELIST": "node[1-3]", "SLURM_SUBMIT_DIR": str(ROOT), "RECIPE": "rloo", "ECHO": "off",
            **extra}


def test_sbatch_dry_run_plans_the_cluster_from_slurm_variables(slurm_bin):
    bin_dir, log = slurm_bin
    r = run(SBATCH, _slurm_env(SLURM_GPUS_ON_NODE="4", SLURM_CPUS_PER_TASK="32"), "trainer.total_epochs=1",
            path_prefix=bin_dir)
    assert r.returncode == 0, r.stderr
    local_ip = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()[0]
    assert log.read_text().splitlines() == ["--nodes=1 --ntasks=1 -w node1 hostname -I"]  # asked on the head only
    lines = r.stdout.splitlines()
    head, *workers = [shlex.split(line) for line in lines[:3]]
    # each srun step asks for the node's CPUs and GPUs itself (srun does not inherit --cpus-per-task)
    step = ["srun", "--nodes=1", "--ntasks=1", "--cpus-per-task=32", "--gpus-per-task=4", "--overlap"]
    assert head == [*step, "-w", "node1", "ray", "start", "--head", f"--node-ip-address={local_ip}", "--port=6379",
                    "--num-cpus=32", "--num-gpus=4", "--block"]
    assert workers == [[*step, "-w", node, "ray", "start", f"--address={local_ip}:6379", "--num-cpus=32",
                        "--num-gpus=4", "--block"] for node in ("node2", "node3")]
    recipe = lines[3:]
    assert recipe[:3] == ["python", "-m", "echorl.main"]
    assert "trainer.nnodes=3" in recipe and "trainer.n_gpus_per_node=4" in recipe and "echorl.enable=false" in recipe
    assert recipe[-1] == "trainer.total_epochs=1"
    assert f"3 nodes, head node1 ({local_ip}:6379), 4 GPUs and 32 CPUs per node" in r.stderr


def test_sbatch_address_falls_back_to_getent_and_can_be_given(slurm_bin):
    bin_dir, log = slurm_bin
    r = run(SBATCH, _slurm_env(SRUN_FAILS="1"), path_prefix=bin_dir)
    assert r.returncode == 0, r.stderr
    assert "--node-ip-address=10.1.2.3" in r.stdout and "--address=10.1.2.3:6379" in r.stdout
    ray_steps = [shlex.split(line) for line in r.stdout.splitlines() if " ray start " in line]
    assert len(ray_steps) == 3
    for argv in ray_steps:  # defaults without SLURM's counts, for the srun step and for Ray alike
        assert {"--cpus-per-task=64", "--gpus-per-task=8", "--num-cpus=64", "--num-gpus=8"} <= set(argv), argv
    log.write_text("")
    r = run(SBATCH, _slurm_env(HEAD_IP="172.16.0.9", GPUS_PER_NODE="2", SLURM_GPUS_ON_NODE="8"), path_prefix=bin_dir)
    assert r.returncode == 0, r.stderr
    assert log.read_text() == ""  # no lookup when HEAD_IP is given
    assert "--node-ip-address=172.16.0.9" in r.stdout and "--num-gpus=2" in r.stdout and "--gpus-per-task=2" in r.stdout


def test_sbatch_refuses_what_it_cannot_resolve(slurm_bin, tmp_path):
    bin_dir, _ = slurm_bin
    (bin_dir / "getent").write_text("#!/bin/bash\nexit 2\n")
    r = run(SBATCH, _slurm_env(SRUN_FAILS="1"), path_prefix=bin_dir)
    assert r.returncode == 1 and "could not find the address of head node 'node1'" in r.stderr
    r = run(SBATCH, _slurm_env(SLURM_GPUS_ON_NODE="h100:8"), path_prefix=bin_dir)
    assert r.returncode == 2 and "GPUS_PER_NODE must be a positive integer, got 'h100:8'" in r.stderr
    r = run(SBATCH, _slurm_env(RECIPE="ppo"), path_prefix=bin_dir)
    assert r.returncode == 2 and "no recipe 'ppo'" in r.stderr


def test_sbatch_has_no_hostname_ip_address_lookup():
    text = SBATCH.read_text()
    assert "--ip-address" not in text and "hostname -I" in text and "getent hosts" in text
    assert subprocess.run(["bash", "-n", str(SBATCH)]).returncode == 0
