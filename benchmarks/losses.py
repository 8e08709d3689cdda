"""Speed and memory of every registered loss: forward + backward, as a ratio to cross-entropy in the same run.

Usage::

    nice -n 10 python benchmarks/losses.py                 # 2D batch 12 x 4 x 256^2, 3D batch 2 x 4 x 64 x 128^2
    nice -n 10 python benchmarks/losses.py --small --repeats 3
    python benchmarks/losses.py --losses "*dice*" --network

Each (loss, shape) runs in a fresh process on the CPU, so that its peak resident memory (``ru_maxrss``
after minus before one forward + backward) is its own; on CUDA it runs in-process and reports
``torch.cuda.max_memory_allocated``. Times are medians over ``--repeats`` after one warm-up. With
``--network`` the table also compares each loss with one forward + backward of a small nnU-Net
``PlainConvUNet`` (dynamic_network_architectures) on the same batch.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

FULL = {"2d": (12, 4, (256, 256)), "3d": (2, 4, (64, 128, 128))}
SMALL = {"2d": (4, 4, (128, 128)), "3d": (1, 4, (32, 64, 64))}
NETWORK = "PlainConvUNet"


def _network(dim: int, num_classes: int):
    import torch
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dim == 2 else (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    return PlainConvUNet(input_channels=1, n_stages=4, features_per_stage=(16, 32, 64, 128), conv_op=conv,
                         kernel_sizes=3, strides=(1, 2, 2, 2), n_conv_per_stage=2, num_classes=num_classes,
                         n_conv_per_stage_decoder=2, conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                         nonlin_kwargs={"inplace": True})


def _step_fn(name: str, batch: int, classes: int, spatial: tuple[int, ...], device: str):
    """A closure running one forward + backward, and the inputs it keeps alive."""
    import torch

    torch.manual_seed(0)
    if name == NETWORK:
        net = _network(len(spatial), classes).to(device)
        image = torch.randn(batch, 1, *spatial, device=device)

        def step():
            net.zero_grad(set_to_none=True)
            net(image).sum().backward()
        return step

    from autoseg.losses import build_loss

    loss = build_loss(name).to(device)
    logits = torch.randn(batch, classes, *spatial, device=device, requires_grad=True)
    target = torch.randint(0, classes, (batch, *spatial), device=device)
    # Ground-truth maps are computed by nnU-Net's augmentation workers, not in the loss (see
    # docs/losses.md): hand them in, so that this measures the loss as the trainer runs it. Their
    # worker-side cost is measured by benchmarks/boundary_epoch.py.
    from autoseg.losses.maps import MAP_KINDS, compute_maps_torch, extra_input_kinds

    kinds = extra_input_kinds(loss)
    maps = compute_maps_torch(target, classes, kinds) if kinds and set(kinds) <= set(MAP_KINDS) else {}

    def step():
        logits.grad = None
        loss(logits, target, **maps).backward()
    return step


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def measure(name: str, shape: tuple, repeats: int, device: str, threads: int) -> tuple[float, float]:
    """(median seconds, peak MiB) of one forward + backward."""
    import torch

    torch.set_num_threads(threads)
    batch, classes, spatial = shape
    step = _step_fn(name, batch, classes, spatial, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.max_memory_allocated()
        step()
        _sync(device)
        peak = (torch.cuda.max_memory_allocated() - before) / 2 ** 20
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        step()
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # KiB -> MiB on Linux
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak


def _child(queue, *args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    try:
        queue.put(measure(*args))
    except Exception as exc:  # reported in the table, not fatal for the run
        queue.put(f"{type(exc).__name__}: {exc}")


def run_one(name: str, shape: tuple, repeats: int, device: str, threads: int):
    if device.startswith("cuda"):
        try:
            return measure(name, shape, repeats, device, threads)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, name, shape, repeats, device, threads))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def _row(name: str, result, ce: tuple[float, float], net) -> None:
    if isinstance(result, str):
        print(f"| {name} | failed: {result} |")
        return
    t, m = result
    line = f"| {name} | {t * 1e3:.1f} | {t / ce[0]:.2f} | {m:.0f} | {m / max(ce[1], 1e-9):.2f} |"
    if net is not None and not isinstance(net, str):
        line += f" {t / net[0]:.3f} |"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from autoseg.losses import list_losses

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="smaller batches and images (CPU-friendly)")
    p.add_argument("--repeats", type=int, default=5, help="timed forward+backward runs per loss (median)")
    p.add_argument("--losses", default="*", help="shell pattern of registered losses")
    p.add_argument("--dims", default="2d,3d", help="comma-separated: 2d, 3d")
    p.add_argument("--network", action="store_true", help="also time a small nnU-Net PlainConvUNet")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)

    shapes = SMALL if args.small else FULL
    names = [n for n in list_losses(args.losses) if n != "ce"]
    machine = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
               else f"{platform.processor() or platform.machine()}, {args.threads} threads")
    print(f"# losses benchmark: torch {torch.__version__}, {args.device} ({machine}), repeats {args.repeats}")
    for dim in args.dims.split(","):
        batch, classes, spatial = shapes[dim]
        shape = (batch, classes, spatial)
        print(f"\n## {dim}: logits [{batch}, {classes}, {', '.join(map(str, spatial))}]")
        ce = run_one("ce", shape, args.repeats, args.device, args.threads)
        net = run_one(NETWORK, shape, max(1, args.repeats // 2), args.device, args.threads) if args.network else None
        header = "| loss | fwd+bwd ms | x CE time | peak MiB | x CE memory |"
        header += " x network time |" if net is not None else ""
        print(header)
        print("|" + "---|" * (header.count("|") - 1))

        if isinstance(ce, str):
            print(f"cross-entropy failed: {ce}")
            return 1
        _row("ce", ce, ce, net)
        for name in names:
            _row(name, run_one(name, shape, args.repeats, args.device, args.threads), ce, net)
        if net is not None:
            _row(f"{NETWORK} (16-128 features, 4 stages)", net, ce, net)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
