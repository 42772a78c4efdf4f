"""The ``echorl`` command (entry point ``echorl = "echorl.cli:main"``).

    echorl train [hydra overrides]     train with the embedded engine (echorl/config/local.yaml)
    echorl analyze RUN_DIR             figure (metrics.png) + EchoClip page (echo_clips.html) of a run
    echorl analyze entropy|deletion|clips ...   entropy profile, step-deletion test, EchoClip page of a
                                       dump (echorl.analysis.commands, docs/analysis.md)
    echorl eval MODEL --bench NAME=SOURCE[:GROUP] ...   evaluate a model or checkpoint; `echorl eval compare A B`
                                       (echorl.eval, docs/evaluation.md)
    echorl export CKPT OUT_DIR         engine checkpoint -> Hugging Face folder

Overrides use verl's key names, e.g.
``echorl train algorithm.adv_estimator=rloo actor_rollout_ref.rollout.n=8 echorl.coef=0.01``.
The verl path (GPU clusters) has its own launcher: ``python -m echorl.main`` (docs/verl.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from echorl.config.generate import cli_help
from echorl.errors import bad_settings_exit
from echorl.extras import missing_extra_exit

__all__ = ["main"]


def _train(overrides: Sequence[str], config_name: str = "local", debug: bool = False) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # each subcommand loads its own modules (the engine imports verl: seconds) after the environment is set
    from echorl.local import load_config
    from echorl.local.trainer import LocalTrainer  # imports verl (seconds): only `echorl train` pays for it

    with bad_settings_exit("echorl train", debug=debug):  # start-up: a bad setting is one line, exit 2
        cfg = load_config(overrides, config_name=config_name)
        trainer = LocalTrainer(cfg)
    summary = trainer.train()
    print(f"done: {summary['steps']} steps, run folder {summary['output_dir']}")
    for key in ("metrics", "figure", "clips_html"):
        if key in summary:
            print(f"  {key:10s} {summary[key]}")
    return 0


def _analyze(run_dir: str) -> int:
    # loaded by the subcommand that uses it (matplotlib)
    from echorl.analysis.plots import plot_metrics
    from echorl.analysis.viewer import write_clip_viewer  # matplotlib and the page writer: `echorl analyze` only

    run = Path(run_dir)
    jsonl = run / "metrics.jsonl"
    if not jsonl.exists():
        print(f"echorl analyze: {jsonl} not found (is {run} a run folder of `echorl train`?)", file=sys.stderr)
        return 2
    print(f"figure     {plot_metrics(jsonl, run / 'metrics.png')}")
    records = run / "echo_clips.json"
    if records.exists():
        print(f"clips_html {write_clip_viewer(json.loads(records.read_text()), run / 'echo_clips.html')}")
    else:
        print(f"no {records.name} in {run} (written at the end of a run): no EchoClip page")
    return 0


ANALYZE_TOOLS = ("entropy", "deletion", "clips")


def _analyze_tool(argv: Sequence[str]) -> int:
    """``echorl analyze entropy|deletion|clips ...`` (:mod:`echorl.analysis.commands`)."""
    from echorl.analysis import commands  # loaded by the subcommand that uses it (torch, transformers)

    parser = argparse.ArgumentParser(prog="echorl analyze", description="analyses of EchoRL's entropy rule (docs/analysis.md)")
    commands.add_parsers(parser.add_subparsers(dest="analyze_cmd", required=True))
    return commands.run(parser.parse_args(list(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    with missing_extra_exit("echorl"):  # a missing optional extra: one line naming it, exit 3
        return _main(argv)


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["analyze"] and argv[1:2] and argv[1] in ANALYZE_TOOLS:
        return _analyze_tool(argv[1:])
    if argv[:1] in (["eval"], ["export"]):  # their parsers live in echorl/eval/cli.py
        from echorl.eval.cli import eval_main, export_main

        return (eval_main if argv[0] == "eval" else export_main)(argv[1:])
    parser = argparse.ArgumentParser(prog="echorl", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_train = sub.add_parser("train", help="train with the embedded engine (hydra overrides follow)",
                             epilog=cli_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p_train.add_argument("--config-name", default="local",
                         help="config of echorl/config/: local (default) or testbed (the chain testbed, docs/engine.md)")
    p_train.add_argument("--debug", action="store_true",
                         help="show the Python traceback of a bad setting (same as ECHORL_DEBUG=1)")
    p_train.add_argument("overrides", nargs="*", help="key=value overrides of echorl/config/<config-name>.yaml")
    p_an = sub.add_parser("analyze", help="figure + EchoClip HTML page of a run folder")
    p_an.add_argument("run_dir")
    sub.add_parser("eval", help="evaluate a model or checkpoint on benchmarks; `eval compare A B` (echorl eval -h)")
    sub.add_parser("export", help="engine checkpoint -> Hugging Face folder (echorl export -h)")
    args = parser.parse_args(argv)
    if args.cmd == "train":
        return _train(args.overrides, args.config_name, args.debug)
    return _analyze(args.run_dir)


if __name__ == "__main__":
    sys.exit(main())
