"""``autoseg convert``: turn Synapse, Cityscapes, CamVid, MSD or plain folders into nnU-Net raw datasets."""

from __future__ import annotations

import argparse
import sys

KINDS = ["synapse", "cityscapes", "camvid", "msd", "folder"]


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "convert", help="convert a dataset to an nnU-Net raw dataset",
        description="Validate a whole source (every problem reported at once, nothing written), then write an "
                    "nnU-Net raw dataset (dataset.json, imagesTr, labelsTr, imagesTs/labelsTs, autoseg_splits.json) "
                    "atomically. See docs/datasets.md.")
    p.add_argument("kind", choices=KINDS, help="source layout")
    p.add_argument("--source", required=True, help="the downloaded dataset folder")
    p.add_argument("--out", help="raw root (default $nnUNet_raw); a folder named DatasetXXX_Name is used as is")
    p.add_argument("--dataset-id", type=int, help="nnU-Net dataset id (defaults: synapse 601, cityscapes 602, "
                                                  "camvid 603, folder 605, msd 610 + task number)")
    p.add_argument("--name", help="dataset name after DatasetXXX_ (default from the source)")
    p.add_argument("--force", action="store_true", help="replace an existing dataset folder")
    p.add_argument("--limit", type=int, help="convert only the first N cases of each split (tests, quick looks)")
    p.add_argument("--allow-empty", action="store_true",
                   help="accept labels holding no evaluated class (warned instead of refused)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    g = p.add_argument_group("synapse")
    g.add_argument("--layout", choices=["auto", "raw", "transunet"], help="which Synapse release (default auto)")
    g = p.add_argument_group("cityscapes, camvid")
    g.add_argument("--size", help="resize to WIDTHxHEIGHT, e.g. 512x512 (images bilinear, labels nearest)")
    g = p.add_argument_group("folder")
    g.add_argument("--images-dir", help="folder of images (default SOURCE/images or SOURCE/imagesTr)")
    g.add_argument("--labels-dir", help="folder of label maps (default SOURCE/labels or SOURCE/labelsTr)")
    g.add_argument("--test-images-dir", help="folder of unlabelled test images (written to imagesTs)")
    g.add_argument("--label-names", help="label-name file: JSON {\"0\": \"background\", ...} or lines 'VALUE NAME'")
    g.add_argument("--channel-names", help="comma-separated channel names, e.g. T2,ADC (CT selects nnU-Net's CT "
                                           "normalisation)")
    g.add_argument("--natural-image", action="store_true", help="class 0 is a real class (no background)")
    return p


_PER_KIND = {
    "synapse": ["layout"],
    "cityscapes": ["size"],
    "camvid": ["size"],
    "msd": [],
    "folder": ["images_dir", "labels_dir", "test_images_dir", "label_names", "channel_names", "natural_image"],
}


def run(args: argparse.Namespace) -> int:
    from autoseg.cli.main import CliError
    from autoseg.data.convert import ConversionError, DatasetExistsError, convert

    options = {"limit": args.limit} if args.limit is not None else {}
    for key in ("layout", "size", "images_dir", "labels_dir", "test_images_dir", "label_names", "channel_names"):
        value = getattr(args, key)
        if value is not None:
            if key not in _PER_KIND[args.kind]:
                raise CliError(f"--{key.replace('_', '-')} does not apply to {args.kind}")
            options[key] = value
    if args.natural_image:
        if args.kind != "folder":
            raise CliError(f"--natural-image does not apply to {args.kind} (it knows whether it is one)")
        options["natural_image"] = True
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")

    def progress(msg: str) -> None:
        print(f"[convert] {msg}", file=sys.stderr, flush=True)

    try:
        result = convert(args.kind, args.source, args.out, args.dataset_id, name=args.name, force=args.force,
                         allow_empty=args.allow_empty, progress=None if args.quiet else progress, **options)
    except ConversionError as e:
        raise CliError(str(e)) from None
    except (DatasetExistsError, ValueError, FileNotFoundError) as e:
        raise CliError(str(e)) from None
    block = result.dataset_json["autoseg"]
    ignore = f", ignore label {block['ignore_label']}" if block["ignore_label"] is not None else ""
    print(f"wrote {result.path}: {result.n_train} training case(s), {result.n_test} test case(s), "
          f"{len(block['class_names'])} class(es){ignore}")
    if block.get("splits_file"):
        print(f"frozen folds in {result.path / block['splits_file']}; before training run "
              "autoseg.data.convert.install_splits(raw_dir, preprocessed_dir) (or copy it to splits_final.json "
              "in the preprocessed dataset folder)")
    for w in result.warnings:
        print(f"warning: {w}")
    return 0
