#!/usr/bin/env python
"""Convert OpenR1-Math-46k, LUFFY's and UFT's files, DAPO-Math-17k or MATH-style parquet/JSONL to
verl's RL parquet (with LUFFY's and UFT's expert traces in ``target``).

    python scripts/prepare_data.py --format luffy  --input openr1.parquet --output data/openr1_math_46k.parquet
    python scripts/prepare_data.py --format uft    --input uft/data/math/train.parquet --output data/uft_math.parquet
    python scripts/prepare_data.py --format openr1 --input openr1.parquet --output data/train.parquet
    python scripts/prepare_data.py --format dapo   --input dapo-math-17k.parquet --output data/dapo.parquet
    python scripts/prepare_data.py --format math   --input math500.jsonl --split test --output data/math500.parquet

The logic (and the row format) lives in echorl/data/prepare.py.
"""

from __future__ import annotations

import argparse
import logging
import sys

from echorl.data.prepare import FORMATS, TEMPLATE, DataFormatError, prepare


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", required=True, choices=sorted(FORMATS), help="source dataset layout")
    ap.add_argument("--input", required=True, nargs="+", help="one or more .parquet / .jsonl files")
    ap.add_argument("--output", required=True, help="output .parquet path")
    ap.add_argument("--split", default="train", help="written to extra_info.split (default: train)")
    ap.add_argument("--data-source", default=None,
                    help="data_source column (default per format: "
                         + ", ".join(f"{k}={v.data_source}" for k, v in sorted(FORMATS.items())) + ")")
    ap.add_argument("--template", default=TEMPLATE, help="user message template with {question} (default: the paper's)")
    dd = ap.add_mutually_exclusive_group()
    dd.add_argument("--dedup", dest="dedup", action="store_true", default=None,
                    help="drop repeated (question, answer) pairs (default: on for dapo, off otherwise)")
    dd.add_argument("--no-dedup", dest="dedup", action="store_false")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # counts of rows without a trace, dropped duplicates
    try:
        n = prepare(args.input, args.output, args.format, split=args.split, data_source=args.data_source,
                    template=args.template, dedup=args.dedup)
    except (DataFormatError, FileNotFoundError, ValueError) as e:
        print(f"prepare_data: error: {e}", file=sys.stderr)
        return 2
    print(f"prepare_data: wrote {n} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
