"""``autoseg nnunet-env``: shell exports so that nnU-Net's own commands find autoseg's folders and trainers."""

from __future__ import annotations

import argparse
import shlex


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "nnunet-env", help="print the exports nnU-Net's commands need (eval \"$(autoseg nnunet-env)\")",
        description="Print export lines for nnUNet_raw, nnUNet_preprocessed, nnUNet_results and nnUNet_extTrainer "
                    "so that nnUNetv2_train -tr nnUNetTrainer_autoseg_<loss> and nnUNetv2_predict work.",
    )
    p.add_argument("--work-dir", default=None, help="as for plan_and_train")
    return p


def run(args: argparse.Namespace) -> int:
    import os

    from autoseg.paths import configure_nnunet, resolve_work_dirs

    configure_nnunet(resolve_work_dirs(args.work_dir))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        print(f"export {var}={shlex.quote(os.environ[var])}")
    return 0
