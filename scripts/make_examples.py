"""Write the example pictures that ship inside the package: the first image of each class in the official
CIFAR-10 test set, as 32x32 PNG (`cifar app` offers them; `cifar export` checks an export on them when the
test set is not at hand).

    python scripts/make_examples.py --data-dir DIR
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from cifar_cli.data import CLASSES, load_split
from cifar_cli.pictures import EXAMPLES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="Folder that contains cifar-10-batches-py.")
    args = parser.parse_args()
    test = load_split(args.data_dir, train=False)
    EXAMPLES.mkdir(exist_ok=True)
    for label, name in enumerate(CLASSES):
        index = int((test.labels == label).argmax())
        Image.fromarray(test.images[index]).save(EXAMPLES / f"{name}.png", optimize=True)
        print(f"{name}: test image #{index}")


if __name__ == "__main__":
    main()
