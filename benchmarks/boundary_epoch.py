"""Epoch time of the map-based losses against dice_ce, in real nnU-Net trainers on the same plan and data.

Usage (on a quiet machine; the numbers of a shared machine mean nothing)::

    python benchmarks/boundary_epoch.py --work-dir WORK [--configuration 3d_fullres] [--iterations 50]
        [--workers 4] [--device cpu|cuda] [--losses dice_ce,dmce,boundary,hausdorff_dt,region_wise,skeleton_recall]
        [--losses 'dice_ce,inverseform;inverseform:head_kernel=1']   # ';' then a setting as in the grid's --loss
    python benchmarks/boundary_epoch.py --work-dir WORK --smoke      # 2 timed iterations per loss: a check, no data

``WORK`` is an autoseg work folder (``nnUNet_raw``, ``nnUNet_preprocessed``; e.g. the ``--work-dir`` of an
``autoseg plan_and_train`` run). Every loss trains ``--iterations`` steps (after ``--warmup`` steps) in its
own generated trainer with ``--workers`` augmentation worker processes, all in one run, and the table
reports per iteration:

- ``wall``: the whole step, waiting for the batch included (what an epoch costs: x iterations per epoch);
- ``data wait``: time spent waiting for the augmentation workers (maps are computed there; with enough
  workers this stays near 0 and the map cost is hidden);
- ``network``, ``loss``, ``backward``: forward pass, loss (with the prediction maps of hausdorff_dt),
  backward pass + optimiser step;
- ``maps (worker CPU)``: the CPU seconds the workers spend on this loss's maps for one batch, measured
  separately by running the maps transform in this process on the labels of the timed batches.

The ratio column is the wall time against dice_ce's in the same run. The issue's targets: at most 1.2x for
every new loss, 1.5x for hausdorff_dt, on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

DEFAULT_LOSSES = "dice_ce,dmce,boundary,hausdorff_dt,region_wise,skeleton_recall"


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _find_dataset(work: Path, configuration: str | None):
    import json as _json

    pre = work / "nnUNet_preprocessed"
    datasets = sorted(p for p in pre.iterdir() if p.is_dir() and (p / "nnUNetPlans.json").exists())
    if not datasets:
        raise SystemExit(f"no preprocessed dataset under {pre}")
    ds = datasets[0]
    plans = _json.loads((ds / "nnUNetPlans.json").read_text())
    if configuration is None:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        manager = PlansManager(plans)
        # the first configuration that was preprocessed (its data folder exists)
        ready = [c for c in manager.available_configurations
                 if (ds / manager.get_configuration(c).data_identifier).is_dir()]
        if not ready:
            raise SystemExit(f"no preprocessed configuration in {ds}")
        configuration = ready[0]
    dataset_json = _json.loads((work / "nnUNet_raw" / ds.name / "dataset.json").read_text())
    return ds.name, plans, configuration, dataset_json


def _label(loss: str, loss_args: dict) -> str:
    """A loss setting's row name: the loss, then its hyper-parameters (``inverseform head_kernel=1``)."""
    return " ".join([loss, *(f"{k}={v}" for k, v in sorted(loss_args.items()))])


def loss_settings(text: str) -> dict[str, tuple[str, dict]]:
    """``--losses`` as {row name: (loss, hyper-parameters)}, ``dice_ce`` (the baseline) first.

    Items are separated by ``;``, each read as the grid's ``--loss`` reads one value
    (:func:`autoseg.grid.spec.parse_loss_item`): ``all``, a comma list of names (``boundary`` is the loss),
    a category, or a setting such as ``inverseform:head_kernel=1,3``.
    """
    from autoseg.grid.spec import parse_loss_item

    settings: dict[str, tuple[str, dict]] = {"dice_ce": ("dice_ce", {})}
    for item in (i for i in text.split(";") if i.strip()):
        settings.update((_label(name, kw), (name, kw)) for name, kw in parse_loss_item(item))
    return settings


def _leaves(x):
    """The same structure of tensors, detached and float32, as leaves that take a gradient."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().float().requires_grad_(True)
    if isinstance(x, (list, tuple)):
        return type(x)(_leaves(i) for i in x)
    if isinstance(x, dict):
        return {k: _leaves(v) for k, v in x.items()}
    return x


def _loss_alone(trainer, output, target, extras, head_outputs, device) -> float:
    """Seconds of the loss's forward + backward alone (deep supervision, maps and auxiliary heads as in
    the step), on detached copies of this step's outputs, so the network's backward is not in it."""
    extras = [dict(e) for e in extras] if extras else [{} for _ in (output if isinstance(output, list) else [0])]
    if head_outputs:
        extras[0].update(_leaves(head_outputs))
    heads, trainer.autoseg_heads = trainer.autoseg_heads, None  # the heads' outputs are handed in above
    try:
        _sync(device)
        t0 = time.perf_counter()
        trainer.loss_in_precision(_leaves(output), target, extras).backward()
        _sync(device)
        return time.perf_counter() - t0
    finally:
        trainer.autoseg_heads = heads


def time_loss(loss: str, plans, configuration, dataset_json, device, iterations: int, warmup: int,
              loss_args: dict | None = None) -> dict:
    import torch

    from autoseg.trainers.factory import make_trainer_class

    torch.manual_seed(0)
    trainer = make_trainer_class(loss, loss_args)(plans={**plans, "continue_training": False}, configuration=configuration,
                                       fold=0, dataset_json=dataset_json, device=device)
    trainer.console_log = False
    trainer.on_train_start()
    rows = {k: [] for k in ("wall", "data_wait", "network", "loss", "backward", "maps_cpu", "loss_fwd_bwd")}
    heads = trainer.autoseg_heads
    captured = {}
    if heads is not None:  # keep the heads' outputs of each step, to time the loss alone afterwards
        pop = heads.pop_outputs

        def keep_outputs():
            captured["heads"] = pop()
            return captured["heads"]
        heads.pop_outputs = keep_outputs
    labels_seen = []
    try:
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        for it in range(warmup + iterations):
            t0 = time.perf_counter()
            batch = next(trainer.dataloader_train)
            t1 = time.perf_counter()
            data = batch["data"].to(device, non_blocking=True)
            target, extras = trainer.split_batch_target(batch["target"])
            target, extras = trainer._to_device(target), trainer._to_device(extras)
            trainer.optimizer.zero_grad(set_to_none=True)
            # the trainer's own forward and loss, in its precision (autoseg/precision.py), timed apart
            _sync(device)
            t2 = time.perf_counter()
            output = trainer.forward_in_precision(data)
            _sync(device)
            t3 = time.perf_counter()
            value = trainer.loss_in_precision(output, target, extras)
            _sync(device)
            t4 = time.perf_counter()
            if trainer.grad_scaler is not None:
                trainer.grad_scaler.scale(value).backward()
                trainer.grad_scaler.unscale_(trainer.optimizer)
                torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
                trainer.grad_scaler.step(trainer.optimizer)
                trainer.grad_scaler.update()
            else:
                value.backward()
                torch.nn.utils.clip_grad_norm_(trainer.network.parameters(), 12)
                trainer.optimizer.step()
            _sync(device)
            t5 = time.perf_counter()
            if it >= warmup:
                rows["loss_fwd_bwd"].append(_loss_alone(trainer, output, target, extras, captured.get("heads"), device))
                for key, dt in zip(("wall", "data_wait", "network", "loss", "backward"),
                                   (t5 - t0, t1 - t0, t3 - t2, t4 - t3, t5 - t4)):
                    rows[key].append(dt)
                labels_seen.append([t.cpu() for t in (target if isinstance(target, list) else [target])])
        # The workers' map cost, measured here: the same transform on the same (augmented) labels.
        transform = trainer._maps_transform(trainer._get_deep_supervision_scales())
        if transform is not None:
            for scales in labels_seen:
                t0 = time.perf_counter()
                for b in range(scales[0].shape[0]):
                    transform(segmentation=[s[b] for s in scales] if len(scales) > 1 else scales[0][b])
                rows["maps_cpu"].append(time.perf_counter() - t0)
        else:
            rows["maps_cpu"] = [0.0]
    finally:
        trainer.on_train_end()
    result = {k: statistics.median(v) for k, v in rows.items()}
    result["iterations_per_epoch"] = trainer.num_iterations_per_epoch
    result["layout"] = [list(k) for k in (trainer.maps_layout or [])]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True, type=Path)
    parser.add_argument("--configuration", default=None)
    parser.add_argument("--losses", default=DEFAULT_LOSSES,
                        help="comma-separated loss names, or all; after a ';', settings as in the grid's --loss "
                             "(inverseform:head_kernel=1)")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4, help="augmentation worker processes (nnUNet_n_proc_DA)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the main process")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every loss this many times, the losses interleaved; each column is the median "
                             "over rounds (drift of a shared machine then touches every loss alike)")
    parser.add_argument("--smoke", action="store_true", help="2 timed iterations after 1 warm-up: a check only")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.smoke:
        args.iterations, args.warmup = 2, 1
    work = args.work_dir.resolve()
    os.environ.update({"nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed"),
                       "nnUNet_results": str(work / "benchmark_boundary_epoch_results"),
                       "nnUNet_n_proc_DA": str(args.workers)})
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dataset, plans, configuration, dataset_json = _find_dataset(work, args.configuration)
    settings = loss_settings(args.losses)
    losses = list(settings)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    runs: dict[str, list[dict]] = {loss: [] for loss in losses}
    for r in range(args.rounds):
        for loss in losses:
            print(f"timing {loss} (round {r + 1}/{args.rounds}) ...", file=sys.stderr, flush=True)
            name, kw = settings[loss]
            runs[loss].append(time_loss(name, plans, configuration, dataset_json, device, args.iterations,
                                        args.warmup, kw))
    results = {loss: {**rs[0], **{k: statistics.median(x[k] for x in rs) for k in rs[0]
                                  if isinstance(rs[0][k], float)},
                      "wall_rounds": [x["wall"] for x in rs]}
               for loss, rs in runs.items()}
    base = results["dice_ce"]["wall"]
    from autoseg.precision import training_precision

    print(f"\n{dataset} {configuration}, device {device} ({training_precision(device.type)}), {args.workers} workers, "
          f"{args.iterations} iterations, {args.rounds} round(s)"
          f"{' (SMOKE: not a measurement)' if args.smoke else ''}\n")
    print("| loss | wall s/it | x dice_ce | data wait | network | loss | backward | maps (worker CPU s/batch) "
          "| loss fwd+bwd alone | % of a dice_ce iteration |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for loss, r in results.items():
        print(f"| {loss} | {r['wall']:.3f} | {r['wall'] / base:.2f} | {r['data_wait']:.3f} | {r['network']:.3f} "
              f"| {r['loss']:.3f} | {r['backward']:.3f} | {r['maps_cpu']:.3f} | {r['loss_fwd_bwd']:.3f} "
              f"| {100 * r['loss_fwd_bwd'] / base:.1f} |")
    if args.json:
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"dataset": dataset, "configuration": configuration, "device": str(device),
                                   "workers": args.workers, "iterations": args.iterations, "rounds": args.rounds, "smoke": args.smoke,
                                   "results": results}, indent=2))
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
