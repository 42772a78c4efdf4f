"""One-line errors for bad settings, shared by ``echorl train`` and ``python -m echorl.main``.

A bad setting (a ``ValueError`` raised by the start-up checks, an unknown key or a malformed
override from Hydra/OmegaConf) ends the command with exit code 2 and one line on stderr::

    echorl: error: <message naming the key, the value and the fix> (ECHORL_DEBUG=1 shows the traceback)

``ECHORL_DEBUG=1`` (or ``--debug`` on ``echorl train``) re-raises instead, with the full traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXIT_BAD_SETTING", "debug_enabled", "one_line", "bad_settings_exit", "setting_errors"]

EXIT_BAD_SETTING = 2


def debug_enabled() -> bool:
    """True when ``ECHORL_DEBUG`` is set to anything but ``''``/``0``/``false``."""
    return os.environ.get("ECHORL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def setting_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "a bad setting" (not a bug): ValueError and Hydra/OmegaConf config errors."""
    kinds: list[type[BaseException]] = [ValueError]
    try:
        from omegaconf.errors import OmegaConfBaseException

        kinds.append(OmegaConfBaseException)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    try:
        from hydra.errors import HydraException

        kinds.append(HydraException)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return tuple(kinds)


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (Hydra's multi-line messages joined with ``; ``)."""
    parts = [p.strip() for p in str(exc).splitlines() if p.strip()]
    msg = "; ".join(parts) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if type(exc).__name__ in ("ConfigCompositionException", "OverrideParseException") and cause is not None:
        extra = "; ".join(p.strip() for p in str(cause).splitlines() if p.strip())
        if extra and extra not in msg:
            msg = f"{msg}: {extra}"
    return msg


@contextmanager
def bad_settings_exit(prog: str = "echorl", debug: bool = False) -> Iterator[None]:
    """Turn a bad-setting exception inside the block into one stderr line and ``SystemExit(2)``."""
    try:
        yield
    except setting_errors() as e:
        if debug or debug_enabled():
            raise
        print(f"{prog}: error: {one_line(e)} (ECHORL_DEBUG=1 shows the traceback)", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_SETTING) from None
