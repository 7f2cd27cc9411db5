"""Milliseconds per training step of one or more networks, on random data: the network's own cost.

    python benchmarks/step_time.py cifarnet-ds48 experiments/candidates.py:deep_c2 [--threads 2] [--json]

One step is bench.py's step of ours (section 3), for any network: a uint8 batch of 128 normalised on the
device, channels-last, forward, loss, backward and the training optimizer's step; the mean of --steps
after 3 untimed ones. Loading and augmenting the images are left out, so a whole epoch moves less than
these figures do (the loader shares the cores). A benchmark, not a test: it prints and asserts nothing.
"""

from __future__ import annotations

import argparse
import json

import torch
from bench import step_rate  # this folder is on sys.path when the script runs

from cifar_cli.models import resolve_model
from cifar_cli.settings import DEFAULTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="presets or FILE.py:NAME, as cifar train --model takes them")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=DEFAULTS.batch_size)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    figures = {name: 1000 * args.batch / step_rate(cpu, True, args.steps, args.batch, resolve_model(name))
               for name in args.models}
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
