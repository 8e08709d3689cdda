"""``autoseg losses``: list the registered losses."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser("losses", help="list the registered losses",
                       description="List the registered losses with category, citation and hyper-parameters.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style name pattern, e.g. '*dice*'")
    p.add_argument("--category", choices=["pixel", "region", "boundary", "combination"])
    p.add_argument("--json", action="store_true", help="print one JSON list")
    return p


def run(args: argparse.Namespace) -> int:
    from autoseg.losses import get_loss_info, list_losses

    infos = [get_loss_info(n) for n in list_losses(args.pattern, args.category)]
    if args.json:
        print(json.dumps([i.as_dict() for i in infos], indent=2, default=repr))
        return 0
    if not infos:
        print(f"no registered loss matches {args.pattern!r}")
        return 0
    width = max(len(i.name) for i in infos)
    for i in infos:
        hp = ", ".join(f"{k}={v!r}" for k, v in i.hyper_parameters.items())
        print(f"{i.name:<{width}}  {i.category:<11}  {i.summary}")
        print(f"{'':<{width}}  {'':<11}  hyper-parameters: {hp or '-'}")
        print(f"{'':<{width}}  {'':<11}  {i.citation}")
    return 0
