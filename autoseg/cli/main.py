"""The ``autoseg`` command: parses arguments and hands each sub-command to one API function."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each entry is a module of autoseg.cli with ``add_parser(subparsers)`` and ``run(args) -> int``.
COMMANDS = ["plan_and_train", "benchmark", "losses", "nnunet_env", "convert", "evaluate", "report", "plan",
            "predict_test", "train_inverseform"]


def build_parser() -> argparse.ArgumentParser:
    from autoseg import __version__

    parser = argparse.ArgumentParser(
        prog="autoseg",
        description="Find out which segmentation loss works on your data, on top of nnU-Net v2.",
    )
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"autoseg.cli.{name}")
        sp = module.add_parser(sub)
        sp.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("\ninterrupted; finished folds are kept and a rerun resumes", file=sys.stderr)
        return 130
    except CliError as e:
        print(f"autoseg {args.command}: error: {e}", file=sys.stderr)
        return 2


class CliError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


if __name__ == "__main__":
    # Run the imported module's main, so that CliError is the class the sub-commands raise.
    from autoseg.cli.main import main as _main

    sys.exit(_main())
