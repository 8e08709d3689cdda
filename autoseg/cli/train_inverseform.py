"""``autoseg train-inverseform``: regenerate InverseForm's inverse-transformation network (deterministic, CPU)."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from autoseg.losses.boundary._inverseform_net import WEIGHTS, TrainConfig

    d = TrainConfig()
    p = sub.add_parser(
        "train-inverseform", help="train the inverse-transformation network of the inverseform loss",
        description="Train InverseForm's inverse-transformation network on synthetic boundary maps under random "
                    "affine transforms (fixed seed, one CPU thread: the same weights every time), write it "
                    "atomically and print its recovery error on held-out synthetic pairs. The defaults reproduce "
                    "the weights shipped with autoseg.",
    )
    p.add_argument("--out", default=str(WEIGHTS), help=f"weights file to write (default: the packaged {WEIGHTS.name})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps (default {d.steps})")
    p.add_argument("--batch", type=int, default=d.batch, help=f"pairs per step (default {d.batch})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate, one-cycle schedule (default {d.lr})")
    p.add_argument("--width", type=int, default=d.width, help=f"channels of the first layer (default {d.width})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    p.add_argument("--eval-pairs", type=int, default=d.eval_pairs, help="held-out pairs for the recovery error")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def run(args: argparse.Namespace) -> int:
    import sys

    from autoseg.cli.main import CliError
    from autoseg.losses.boundary._inverseform_net import TrainConfig, train

    if args.steps < 1 or args.batch < 8 or args.width < 1 or args.eval_pairs < 1:
        raise CliError("--steps, --width and --eval-pairs must be >= 1 and --batch >= 8")
    config = TrainConfig(steps=args.steps, batch=args.batch, lr=args.lr, width=args.width, seed=args.seed,
                         eval_pairs=args.eval_pairs)
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    _, metrics = train(config, out=args.out, log=log)
    print(json.dumps({"out": args.out, **metrics}, indent=2))
    return 0
