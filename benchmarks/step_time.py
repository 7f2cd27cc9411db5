"""Milliseconds per training step of one or more networks, on random data: the network's own cost.

    python benchmarks/step_time.py cifarnet-ds48 benchmarks/candidates.py:deep_c2 [--threads 2] [--json]

One step is what `cifar train` does per batch on the CPU: a channels-last batch of 128 forward, the
label-smoothed loss, backward and a Nesterov SGD step. Each figure is the mean of --steps timed steps
after --warmup untimed ones. Loading and augmenting the images are left out, so a whole epoch moves less
than these figures do (the loader shares the cores). A benchmark, not a test: it prints and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from cifar_cli.engine import param_groups
from cifar_cli.models import create_model, resolve_model
from cifar_cli.runtime import memory_format
from cifar_cli.settings import DEFAULTS


def step_ms(name: str, batch: int, warmup: int, steps: int) -> float:
    device = torch.device("cpu")
    model = create_model(resolve_model(name)).to(device, memory_format=memory_format(device)).train()
    optimizer = torch.optim.SGD(param_groups(model, DEFAULTS.weight_decay), lr=DEFAULTS.lr,
                                momentum=DEFAULTS.momentum, nesterov=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=generator).contiguous(memory_format=memory_format(device))
    y = torch.randint(0, 10, (batch,), generator=generator)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y, label_smoothing=DEFAULTS.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1000 * sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="presets or FILE.py:NAME, as cifar train --model takes them")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    figures = {name: step_ms(name, args.batch, args.warmup, args.steps) for name in args.models}
    if args.json:
        print(json.dumps({"threads": args.threads, "batch": args.batch, "torch": torch.__version__,
                          "ms_per_step": figures}))
        return
    threads = f"{args.threads} thread{'' if args.threads == 1 else 's'}"
    print(f"torch {torch.__version__}, {threads}, batch {args.batch}, mean of {args.steps} steps")
    for name, ms in figures.items():
        print(f"{ms:8.1f} ms  {name}")


if __name__ == "__main__":
    main()
