"""`cifar convert`: a PyTorch .pt/.pth state_dict of this network becomes a cifar-cli checkpoint, through
torch.load(weights_only=True), which refuses a malicious pickle instead of running it."""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path

import torch

from cifar_cli.checkpoint import MAX_CHECKPOINT_BYTES, Checkpoint, model_from_checkpoint, save_checkpoint
from cifar_cli.errors import CifarError
from cifar_cli.files import read_input
from cifar_cli.models import ModelSpec, preset_spec


def convert_pytorch_checkpoint(src: Path, dst: Path, model: ModelSpec | None = None) -> Checkpoint:
    """Turn a PyTorch .pt/.pth state_dict of this network into a cifar-cli .safetensors checkpoint.

    torch.load(weights_only=True) accepts only tensors and plain containers, so a malicious pickle is
    refused instead of run.
    """
    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    if dst.exists() and dst.resolve() == src.resolve():
        raise CifarError(f"cannot convert {src} onto itself; name another target")
    raw = read_input(src, MAX_CHECKPOINT_BYTES, "checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr; the error says enough
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # an unsafe or damaged pickle
        raise CifarError(f"cannot convert {src}: {_torch_load_reason(e)}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not (isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values())):
        raise CifarError(f"cannot convert {src}: it does not hold a state_dict of tensors")
    state, came_from = {}, {}
    for original, tensor in obj.items():
        name = str(original)
        while name.startswith(("module.", "_orig_mod.")):  # DataParallel / DDP / torch.compile wrappers, nested
            name = name.split(".", 1)[1]
        if name in state:  # two names for one weight: keeping either would be a guess
            raise CifarError(f"cannot convert {src}: {came_from[name]!r} and {original!r} both name {name!r}")
        state[name], came_from[name] = tensor.clone(), original  # clone: safetensors refuses shared storage
    ckpt = Checkpoint(model or preset_spec(), state, metrics={"converted_from": src.name})
    model_from_checkpoint(ckpt, src, given=ckpt.model)  # refuses weights of another architecture
    save_checkpoint(dst, ckpt)
    return ckpt


# Words of torch's advice on how to load a refused file anyway (weights_only=False, add_safe_globals, "if you
# trust the source"): a sentence holding any of them is never repeated, whatever torch's version words it as,
# and whatever a hostile file names its globals.
_ADVICE = ("weights_only", "safe_globals", "allowlist", "trust", "can still be loaded", "torch.load", "torch.serial",
           "documentation", "http", "pickle_module", "arbitrary code")


def _torch_load_reason(e: Exception) -> str:
    """torch's own reason for refusing a file (the global or opcode it rejected), never its advice to turn
    the safety off: every sentence of its message that gives advice is dropped, whichever path raised it."""
    text = str(e)
    unsafe = "WeightsUnpickler error:" in text or "Unsupported" in text or "weights_only" in text.lower()
    text = text.split("WeightsUnpickler error:", 1)[-1]
    sentences = [part.strip() for part in re.split(r"(?<=[.!?])\s+|\n", text)]
    kept = [part.rstrip(".") for part in sentences if part and not any(w in part.lower() for w in _ADVICE)]
    if unsafe:
        return f"it needs more than tensors to load ({kept[0]})" if kept else "it needs more than tensors to load"
    return f"it is not a PyTorch file of tensors ({type(e).__name__}{': ' + kept[0] if kept else ''})"
