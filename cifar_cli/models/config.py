"""The network's configuration: everything needed to rebuild it, written into every checkpoint."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

ARCH = "cifarnet-ds"  # bump when the layer layout changes, so old checkpoints are refused, not misread


@dataclass(frozen=True)
class NetConfig:
    arch: str = ARCH
    widths: tuple[int, int, int, int] = (32, 64, 128, 192)  # channels of blocks C1..C4
    num_classes: int = 10
    dropout: float = 0.05

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetConfig:
        """Rebuild from `to_dict` output; raises ValueError on anything it cannot represent."""
        if not isinstance(data, dict):
            raise ValueError("model config is not an object")
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(data) - known):
            raise ValueError(f"unknown model config fields: {', '.join(unknown)}")
        if data.get("arch", ARCH) != ARCH:
            raise ValueError(f"architecture {data.get('arch')!r} is not {ARCH!r}")
        widths = data.get("widths", cls.widths)
        if not (isinstance(widths, (list, tuple)) and len(widths) == 4
                and all(isinstance(w, int) and 0 < w <= 4096 for w in widths)):
            raise ValueError(f"widths must be four positive integers, not {widths!r}")
        num_classes = data.get("num_classes", cls.num_classes)
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, not {num_classes!r}")
        dropout = data.get("dropout", cls.dropout)
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), not {dropout!r}")
        return cls(widths=tuple(widths), num_classes=num_classes, dropout=float(dropout))
