"""An optimizer's state in a checkpoint: its tensors beside the weights, its numbers in the metadata, and
every value checked against the optimizer the run's settings build before torch sees it."""

from __future__ import annotations

from typing import Any

import torch

from cifar_cli import schema


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into tensors (for safetensors) and JSON (for metadata)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


# The param-group fields the schedule moves each step; every other one follows from the run's settings.
_GROUP_PROGRESS = ("lr", "momentum")
# How the step is computed (the fused kernel on CUDA), not what it computes: the device of the resumed run decides.
_GROUP_KERNEL = ("foreach", "fused")


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: Any, optimizer: torch.optim.Optimizer
                        ) -> dict[str, Any]:
    """The state_dict `flatten_optimizer` split, checked against `optimizer` (built for the run from its
    settings) before torch sees it: the same param groups with the same fixed settings, a finite lr and
    momentum, and per-parameter state of each parameter's shape, finite. schema.Invalid otherwise."""
    meta = schema.mapping(meta, "optimizer")
    fresh = schema.jsonable(optimizer.state_dict()["param_groups"])
    saved = meta.get("param_groups")
    if not isinstance(saved, list) or len(saved) != len(fresh):
        raise schema.Invalid("optimizer.param_groups", f"is not a list of {len(fresh)} groups")
    groups = [_param_group(group, want, f"optimizer.param_groups[{i}]")
              for i, (group, want) in enumerate(zip(saved, fresh))]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    scalars = schema.mapping(meta.get("scalars", {}), "optimizer.scalars")
    state: dict[int, dict[str, Any]] = {}
    for flat, value in [*tensors.items(), *scalars.items()]:
        index, _, key = flat.partition(".")
        name = f"optimizer state {flat[:60]!r}"
        if not (key.isidentifier() and len(key) <= 40):
            raise schema.Invalid(name, "is not INDEX.NAME")
        where = schema.digits(index, name, len(params) - 1)  # no parameters at all: no index is one
        if isinstance(value, torch.Tensor):
            if value.shape not in (params[where].shape, torch.Size([])) or not value.is_floating_point():
                raise schema.Invalid(name, f"is {value.dtype} {tuple(value.shape)}, not the parameter's "
                                           f"{tuple(params[where].shape)}")
            if not torch.isfinite(value).all():
                raise schema.Invalid(name, "holds NaN or infinity")
        else:
            schema.number(value, name, -1e38, 1e38)
        state.setdefault(where, {})[key] = value
    return {"state": state, "param_groups": groups}


def _param_group(group: Any, fresh: dict[str, Any], name: str) -> dict[str, Any]:
    group = schema.mapping(group, name)
    group = {**group, **{key: fresh[key] for key in _GROUP_KERNEL if key in fresh}}
    for key, value in fresh.items():
        if key not in _GROUP_PROGRESS and group.get(key, value) != value:
            raise schema.Invalid(f"{name}.{key}", f"is {group.get(key)!r:.40}, but the run's settings give {value!r}")
    checked = schema.like({k: group.get(k, v) for k, v in fresh.items()}, fresh, name)
    top = fresh.get("max_lr", fresh["lr"])
    schema.number(checked["lr"], f"{name}.lr", 0.0, top * (1 + 1e-6))
    schema.number(checked.get("momentum", 0.0), f"{name}.momentum", 0.0, 1.0)
    return checked


def match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each per-parameter state tensor its parameter's memory format (a checkpoint stores them
    contiguous; a channels_last weight with a contiguous momentum buffer loses the multi-tensor step)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
