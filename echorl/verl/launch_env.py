"""Driver-side environment fixes applied by ``python -m echorl.main`` before Ray starts.

:func:`wandb_offline_fallback`: verl's ``Tracking`` calls ``wandb.init`` inside the Ray task runner
after every model has loaded; without credentials that crashes the run minutes in. When
``trainer.logger`` asks for wandb and nothing logs this machine in, EchoRL switches wandb to
offline mode with a warning, in this process and in every Ray worker (verl's ``run_ppo`` merges
``ray_kwargs.ray_init.runtime_env`` into the runtime env it passes to ``ray.init``).

:func:`wandb_dir_of_run`: wandb writes its run files (an offline run's only copy, until ``wandb
sync``) under ``WANDB_DIR``, else under the working directory of the process that calls
``wandb.init``: verl's task runner, whose working directory under ``ray job submit`` is the job's
temporary folder, which Ray deletes. With wandb logging, every Ray worker gets ``WANDB_DIR``: the
run's output folder (``trainer.default_local_dir``, where its checkpoints go) unless the user set it.
"""

from __future__ import annotations

import netrc
import os
import warnings
from urllib.parse import urlparse

from omegaconf import DictConfig, OmegaConf, open_dict

WANDB_DEFAULT_HOST = "api.wandb.ai"


class WandbOfflineWarning(UserWarning):
    """wandb was requested without credentials: runs are logged offline (``wandb sync`` uploads them later)."""


def _loggers(config: DictConfig) -> list[str]:
    value = OmegaConf.select(config, "trainer.logger", default=None)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def wandb_host() -> str:
    """Host wandb authenticates against (``WANDB_BASE_URL`` or the public service)."""
    base = os.environ.get("WANDB_BASE_URL")
    return (urlparse(base).hostname or WANDB_DEFAULT_HOST) if base else WANDB_DEFAULT_HOST


def netrc_has_login(host: str, path: str | None = None) -> bool:
    """Whether ``~/.netrc`` (or ``$NETRC``) has a password for ``host`` (``wandb login`` writes one)."""
    path = path or os.environ.get("NETRC") or os.path.join(os.path.expanduser("~"), ".netrc")
    if not os.path.isfile(path):
        return False
    try:
        auth = netrc.netrc(path).authenticators(host)
    except (netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def _set_worker_env(config: DictConfig, name: str, value: str) -> None:
    """Set ``name=value`` in ``config.ray_kwargs.ray_init.runtime_env.env_vars`` (created when missing)."""
    with open_dict(config):
        runtime_env = OmegaConf.select(config, "ray_kwargs.ray_init.runtime_env", default=None)
        if runtime_env is None:
            OmegaConf.update(config, "ray_kwargs.ray_init.runtime_env", {}, force_add=True)
            runtime_env = config.ray_kwargs.ray_init.runtime_env
        with open_dict(runtime_env):
            if runtime_env.get("env_vars") is None:
                runtime_env.env_vars = {}
            runtime_env.env_vars[name] = value


def wandb_dir_of_run(config: DictConfig) -> str | None:
    """Point wandb's files at the run's output folder when ``trainer.logger`` has wandb.

    The folder is ``WANDB_DIR`` when the user set it, else ``trainer.default_local_dir`` (made
    absolute against this process's working directory); it becomes ``WANDB_DIR`` in the Ray
    workers' ``env_vars`` (workers on other nodes do not inherit the driver's environment, and
    verl's task runner, not this process, calls ``wandb.init``). ``wandb.init`` creates the folder
    and writes ``wandb/<run>`` under it. Returns the folder, or ``None`` without wandb.
    """
    if "wandb" not in _loggers(config):
        return None
    folder = os.environ.get("WANDB_DIR") or OmegaConf.select(config, "trainer.default_local_dir", default=None)
    if not folder:
        raise ValueError("trainer.logger has wandb but trainer.default_local_dir is empty: set it to the run's output "
                         "folder (wandb's files go there), or set WANDB_DIR")
    folder = os.path.abspath(os.path.expanduser(str(folder)))
    _set_worker_env(config, "WANDB_DIR", folder)
    return folder


def wandb_offline_fallback(config: DictConfig) -> str | None:
    """Switch wandb to offline when ``trainer.logger`` has wandb and no credentials are set.

    Credentials: ``WANDB_API_KEY``, an explicit ``WANDB_MODE`` (the user chose), or a ``.netrc``
    entry for the wandb host. Otherwise sets ``WANDB_MODE=offline`` in ``os.environ`` and in
    ``config.ray_kwargs.ray_init.runtime_env.env_vars`` (the Ray workers' environment) and warns
    with :class:`WandbOfflineWarning`. Either way wandb's files go under the run's output folder
    (:func:`wandb_dir_of_run`). Returns the mode it set, or ``None`` when it changed nothing.
    """
    if "wandb" not in _loggers(config):
        return None
    folder = wandb_dir_of_run(config)
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") or netrc_has_login(wandb_host()):
        return None
    os.environ["WANDB_MODE"] = "offline"
    _set_worker_env(config, "WANDB_MODE", "offline")
    warnings.warn(
        f"trainer.logger has wandb but there is no WANDB_API_KEY, no WANDB_MODE and no wandb login "
        f"({wandb_host()} in ~/.netrc): logging to wandb OFFLINE (WANDB_MODE=offline, also for the Ray workers); "
        f"the run's files go to {folder}/wandb/offline-run-*; upload them later with `wandb sync` on that folder. "
        "Fix: export WANDB_API_KEY or run `wandb login`, set WANDB_MODE=online|offline|disabled yourself, "
        "or drop wandb from trainer.logger.",
        WandbOfflineWarning,
        stacklevel=2,
    )
    return "offline"
