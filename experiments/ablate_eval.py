"""Held-out accuracy of a run's final weights with and without the weight average and flip TTA.

Takes a last.safetensors from `cifar train --val-split N --ema DECAY` and scores, on the same N held-out
training images the run held out, the four ways of judging it: the raw training weights or their
average, each with and without flip TTA. The test set is not used: this is for choosing defaults.

    python experiments/ablate_eval.py runs/tune/last.safetensors --data-dir DIR [--json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from cifar_cli.checkpoint import load_checkpoint, model_from_checkpoint
from cifar_cli.data import eval_split
from cifar_cli.errors import CifarError
from cifar_cli.run_state import settings_of
from cifar_cli.training.evaluation import evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    ckpt = load_checkpoint(args.checkpoint)
    settings = settings_of(ckpt)
    try:
        held = eval_split(args.data_dir, "held-out", settings.val_split)
    except CifarError as e:  # a run that held nothing out
        raise SystemExit(f"error: {e}") from None
    models = {"raw": model_from_checkpoint(ckpt, raw=True)}
    if ckpt.raw_state:
        # (A finished lookahead run ends with both copies equal: compare it with a run without instead.)
        copy = f"ema {settings.ema}" if settings.ema else f"lookahead {settings.lookahead}"
        models[copy] = model_from_checkpoint(ckpt)
    cpu = torch.device("cpu")
    rows = [{"weights": name, "tta": tta, "held_out_acc": evaluate(model, held, cpu, tta=tta).accuracy}
            for name, model in models.items() for tta in (False, True)]
    if args.json:
        print(json.dumps({"checkpoint": str(args.checkpoint), "epoch": ckpt.epoch, "held_out": len(held),
                          "results": rows}, indent=2))
        return
    print(f"{args.checkpoint} (epoch {ckpt.epoch}), {len(held):,} held-out images")
    for r in rows:
        print(f"  {r['weights']:<10} {'flip TTA' if r['tta'] else 'no TTA':<9} {100 * r['held_out_acc']:6.2f}%")


if __name__ == "__main__":
    main()
