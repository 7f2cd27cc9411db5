"""How long one TAB takes: `cifar` run as the shell's completion runs it, for --model, --class and --layer.

Prints, per completion, the best wall-clock time of a few tries and the CPU time of the process (the CPU
time is what a busy machine does not inflate). Target: under 0.3 s a TAB.

    python benchmarks/completion_time.py [--tries 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time

CASES = {"--model": "cifar train --model cif", "--class": "cifar mistakes --class c",
         "--layer": "cifar gradcam --layer c4", "command": "cifar rec"}


def one_tab(command: list[str], words: str) -> tuple[float, float, str]:
    env = {**os.environ, "_CIFAR_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - 1)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    offered = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), offered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=5)
    tries = parser.parse_args().tries
    script = shutil.which("cifar") or os.path.join(os.path.dirname(sys.executable), "cifar")
    for name, words in CASES.items():
        runs = [one_tab([script], words) for _ in range(tries)]
        wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        offered = runs[0][2].split()
        print(f"{name:8} wall {wall:.3f} s  cpu {cpu:.3f} s  offers {len(offered)}: {' '.join(offered[:4])}")


if __name__ == "__main__":
    main()
