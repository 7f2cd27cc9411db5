"""Which network a command runs, as plain data: a preset and its settings, or the user's own code.

A user network is named `FILE.py:NAME` or `package.module:NAME`, where NAME is a class or function that
returns an nn.Module taking N x 3 x 32 x 32 images to N x 10 logits. Its code is imported only when the
user names it on the command line; a checkpoint records the name, the class and a hash of the source file,
and is never a reason to import anything: a spec read from a file is a record, and `create_model` refuses to
build a user network from one (only `resolve_model`, given what the user typed, makes a spec it will build).

`choose_network` is the one decision of which network a command runs; it calls the user's factory once, and
`create_model` hands that very network to the command instead of calling the factory again.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cifar_cli.errors import CifarError, shell_command
from cifar_cli.interrupts import signal_arrived
from cifar_cli.models.config import NUM_CLASSES
from cifar_cli.models.registry import PRESETS, config_dict
from cifar_cli.runtime import memory_format
from cifar_cli.settings import DEFAULT_MODEL


@dataclass(frozen=True)
class ModelSpec:
    name: str = DEFAULT_MODEL  # a preset, or the user's FILE.py:NAME / package.module:NAME
    config: dict[str, Any] = field(default_factory=dict)  # a preset's settings, in JSON form
    class_name: str = ""  # user networks: the class of the module their callable returned
    source_sha256: str = ""  # user networks: the source file as it was when the checkpoint was written
    # User networks: True only when the user typed the name (resolve_model). A spec read from a file is a
    # record of what ran, never a licence to import it. Not part of equality: the same network either way.
    typed: bool = field(default=False, compare=False, repr=False)
    # User networks the user typed: the network the factory returned when resolve_model checked it, kept
    # for the first create_model that would build the very same one (_FirstBuild). Not part of equality.
    first_build: list[_FirstBuild] = field(default_factory=list, compare=False, repr=False)
    # A network handed over in Python (the API's `model=`, handed_over): that very module is what every
    # create_model of this spec gives, trained and loaded in place. Not part of equality.
    instance: nn.Module | None = field(default=None, compare=False, repr=False)

    @property
    def is_preset(self) -> bool:
        return self.name in PRESETS

    def to_dict(self) -> dict[str, Any]:
        if self.is_preset:
            return {"name": self.name, "config": self.config}
        return {"name": self.name, "class": self.class_name, "source_sha256": self.source_sha256}

    @classmethod
    def from_dict(cls, data: Any) -> ModelSpec:
        """Read what `to_dict` wrote; ValueError for anything else. Imports nothing."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            raise ValueError("the model record has no name")
        name = data["name"]
        if name in PRESETS:
            return cls(name, config_dict(PRESETS[name].config(data.get("config", {}))))
        if ":" not in name:
            raise ValueError(f"unknown network {name!r} (presets: {', '.join(PRESETS)})")
        class_name, sha = data.get("class", ""), data.get("source_sha256", "")
        if not (isinstance(class_name, str) and isinstance(sha, str)):
            raise ValueError("the user network's class and source hash must be strings")
        return cls(name, {}, class_name, sha)

    def describe(self) -> str:
        return self.name if self.is_preset else f"{self.name} ({self.class_name or 'user network'})"


@dataclass(frozen=True)
class _FirstBuild:
    """A user network as its factory built it, and the random stream around that build: where it stood
    before (the factory's weights are drawn from there) and where the build left it."""

    network: nn.Module
    rng_before: torch.Tensor
    rng_after: torch.Tensor


def preset_spec(name: str = DEFAULT_MODEL) -> ModelSpec:
    return ModelSpec(name, config_dict(PRESETS[name].default_config))


def choose_network(typed: str | None, recorded: ModelSpec | None = None, where: object = "the checkpoint",
                   seed: int | None = None) -> ModelSpec:
    """Which network a command runs, decided once per command: the --model the user typed, else the network
    a checkpoint recorded (`recorded`, read from the file `where`), else the default preset. A checkpoint's
    preset is rebuilt from the file alone; its user network only from what the user typed, since a file is
    never a reason to import code. `seed`: the --seed a fresh network is trained with (see resolve_model)."""
    given = resolve_model(typed, seed) if typed else None
    if recorded is None:
        return given or preset_spec()
    return spec_to_build(recorded, given, where)


def spec_to_build(recorded: ModelSpec, given: ModelSpec | None, where: object) -> ModelSpec:
    """The network to build for a checkpoint that recorded `recorded`, given the --model the user typed."""
    if recorded.is_preset:
        if given is not None and given.name != recorded.name:
            raise CifarError(f"{where} holds {recorded.name}, not {given.name}; drop --model or pass "
                             f"{shell_command(['--model', recorded.name])}")
        return recorded
    if given is None:
        raise CifarError(f"{where} holds your own network {recorded.describe()}; cifar-cli never imports code "
                         f"that a checkpoint names, so pass it yourself: {shell_command(['--model', recorded.name])}")
    return given


def resolve_model(name: str | None, seed: int | None = None) -> ModelSpec:
    """--model as the user typed it: a preset name, or FILE.py:NAME / package.module:NAME (imported now).

    A user network is built and checked now, once: the first `create_model` of the spec gets that network.
    The build draws its weights from the random stream as it stands (from `seed`, if given: training seeds
    the stream before it builds the network) and leaves the stream as it was, so that a later create_model
    from the same point is the same build.
    """
    name = name or DEFAULT_MODEL
    if name in PRESETS:
        return preset_spec(name)
    if ":" not in name:
        raise CifarError(f"--model {name}: not a preset ({', '.join(PRESETS)}) nor FILE.py:NAME or "
                         "package.module:NAME")
    factory, source = _import_factory(name)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        before = torch.get_rng_state()
        model = _build_user_network(name, factory)
        first = _FirstBuild(model, before, torch.get_rng_state())
    return ModelSpec(name, {}, type(model).__name__, _sha256(source) if source else "", typed=True,
                     first_build=[first])


def create_model(spec: ModelSpec) -> nn.Module:
    """A fresh network for the spec (random weights; seed torch first for repeatable ones).

    A user network is built only from a spec the user typed (resolve_model): one that came from a file
    names code, and naming code in a file is no reason to run it. The network resolve_model built is
    handed over instead of a second build when the random stream stands where that build began, the
    stream moved on as the build moved it: the very network and stream a second build would give.
    """
    if spec.instance is not None:
        return spec.instance
    if spec.is_preset:
        return PRESETS[spec.name].create(spec.config)
    if not spec.typed:
        raise CifarError(f"{spec.describe()} is your own network, named in a file; cifar-cli never imports code "
                         f"that a file names, so pass it yourself: --model {spec.name}")
    if spec.first_build and torch.equal(torch.get_rng_state(), spec.first_build[0].rng_before):
        first = spec.first_build.pop()
        torch.set_rng_state(first.rng_after)
        return first.network
    factory, _ = _import_factory(spec.name)
    return _build_user_network(spec.name, factory)


def handed_over(network: nn.Module | Callable[[], Any], preset: ModelSpec | None = None) -> ModelSpec:
    """A network the user hands over in Python (an nn.Module, or a class or function returning one), as a spec
    whose every create_model gives that very module. `preset`: the preset it was built as, which a
    checkpoint records instead (so the file alone rebuilds it). Otherwise it is checked as a --model network is
    and recorded as the user's own, by its source file (or module) and class name: `FILE.py:Class`."""
    if preset is not None:
        return replace(preset, instance=network)
    owner = type(network) if isinstance(network, nn.Module) else network
    source = _source_file(owner)
    name = f"{source or getattr(owner, '__module__', 'python')}:{getattr(owner, '__qualname__', 'network')}"
    if not isinstance(network, nn.Module):
        with user_code(name, "calling it", every_error=True):
            network = network()
    network = _check_user_network(name, network, guarded=False)  # the user's own class stays (picklable)
    return ModelSpec(name, {}, type(network).__name__, _sha256(source) if source else "", typed=True,
                     instance=network)


def _source_file(owner: object) -> Path | None:
    """The .py file a class or function was defined in, if it was one (not a notebook cell or the REPL)."""
    try:
        source = inspect.getsourcefile(owner)  # type: ignore[arg-type]
    except (TypeError, OSError):
        return None
    return Path(source) if source and source.endswith(".py") and Path(source).is_file() else None


def source_changed(recorded: ModelSpec, given: ModelSpec) -> bool:
    """True when a user network's source file differs from the one a checkpoint was trained with."""
    return bool(recorded.source_sha256 and given.source_sha256 and recorded.source_sha256 != given.source_sha256)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _what_it_did(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"called sys.exit({'' if e.code is None else repr(e.code)}); a network must return logits or raise " \
            "an exception, never end the program"
    return f"raised {_first_line(e)}"


class user_code:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Runs a piece of a user network's code; what it raises becomes the network's fault, in one line.

    SystemExit, GeneratorExit and a KeyboardInterrupt that no real signal caused (the network raised it)
    would otherwise end the command silently; they always become a CifarError. Ordinary exceptions do
    only with `every_error`: elsewhere the caller words them. A real Ctrl-C passes through untouched.
    """

    def __init__(self, spec: str, doing: str, every_error: bool = False):
        self.spec, self.doing, self.every_error = spec, doing, every_error

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, e: BaseException | None, tb: object) -> bool:
        if e is None or isinstance(e, CifarError) or (isinstance(e, Exception) and not self.every_error):
            return False
        if isinstance(e, KeyboardInterrupt) and signal_arrived():
            return False
        raise CifarError(f"--model {self.spec}: {self.doing} {_what_it_did(e)}") from None


def _names_a_file(target: str) -> bool:
    """FILE.py (or a path) rather than package.module, in the part before NAME."""
    return target.endswith(".py") or "/" in target or "\\" in target


def source_file(name: str) -> Path | None:
    """The file a user network named FILE.py:NAME is imported from, as an absolute path (links resolved);
    None for a preset or package.module:NAME, whose file depends on where Python looks for modules."""
    target, _, attr = name.rpartition(":")
    if not target or not attr.isidentifier() or not _names_a_file(target):
        return None
    return Path(target).expanduser().resolve()


def _import_factory(spec: str) -> tuple[Callable[[], Any], Path | None]:
    """Import the module a user named and return (its NAME, its source file)."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise CifarError(f"--model {spec}: expected FILE.py:NAME or package.module:NAME")
    is_file = _names_a_file(target)
    with user_code(spec, f"importing {target}", every_error=True):
        module = _import_file(Path(target).expanduser()) if is_file else importlib.import_module(target)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise CifarError(f"--model {spec}: {target} has no class or function named {attr}")
    source = getattr(module, "__file__", None)
    return factory, Path(source) if source else None


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise CifarError(f"--model: network file not found: {path}")
    name = f"cifar_user_model_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise CifarError(f"--model: cannot import {path} as Python")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
    try:
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.resolve().parent))
    sys.modules[name] = module
    return module


def _build_user_network(spec: str, factory: Callable[[], Any]) -> nn.Module:
    """Call the user's factory and check its contract on a real forward pass, in words the user can act on."""
    with user_code(spec, "calling it", every_error=True):
        model = factory()
    return _check_user_network(spec, model)


def _check_user_network(spec: str, model: Any, guarded: bool = True) -> nn.Module:
    """What every user network must be: an nn.Module with parameters giving N x 10 logits for N x 3 x 32 x 32
    images, whatever the batch size; its own methods then run as user_code (_guard) if `guarded`."""
    if not isinstance(model, nn.Module):
        raise CifarError(f"--model {spec}: it returned a {type(model).__name__}, not a torch nn.Module")
    if not any(True for _ in model.parameters()):
        raise CifarError(f"--model {spec}: the network has no parameters to train")
    if guarded:
        _guard(spec, model)
    was_training, device = model.training, next(model.parameters()).device  # one handed over may be on a GPU
    try:
        for n in (2, 3):  # two sizes: a forward that assumes one batch size fails on the other
            with torch.no_grad(), user_code(spec, f"its forward pass on a {n} x 3 x 32 x 32 batch", every_error=True):
                out = model.eval()(torch.zeros(n, 3, 32, 32, device=device))
            _check_logits(spec, out, n, "")
    finally:
        model.train(was_training)
    return model


def _check_logits(spec: str, out: Any, n: int, mode: str) -> None:
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (n, NUM_CLASSES):
        hint = "; forward must keep the batch dimension, e.g. x.flatten(1) or x.view(x.size(0), -1), not a fixed " \
            "size" if n != 2 and isinstance(out, torch.Tensor) else ""
        raise CifarError(f"--model {spec}: {mode}a {n} x 3 x 32 x 32 batch gave {shape}; expected ({n}, "
                         f"{NUM_CLASSES}) logits, one per CIFAR-10 class{hint}")


def _guard(spec: str, model: nn.Module) -> None:
    """Make the network's own methods that cifar-cli calls (forward, init_from_images) run as `user_code`,
    wherever they are called from: evaluation, training, Grad-CAM, torchinfo. The class keeps its name."""
    cls = type(model)

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        with user_code(spec, "its forward pass"):
            return cls.forward(self, *args, **kwargs)

    methods: dict[str, Any] = {"forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
    init = getattr(cls, "init_from_images", None)
    if callable(init):
        def init_from_images(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            with user_code(spec, "its init_from_images", every_error=True):
                return init(self, *args, **kwargs)

        methods["init_from_images"] = init_from_images
    with user_code(spec, f"subclassing {cls.__name__}", every_error=True):  # __init_subclass__ is theirs too
        guarded = type(cls.__name__, (cls,), methods)
    try:
        model.__class__ = guarded
    except TypeError:  # a class whose instances cannot change class (a scripted module): the CLI's net still holds
        pass


def check_trainable(spec: str, model: nn.Module, device: torch.device, images: int, batch_size: int) -> None:
    """What training needs, tried before the first step, so that a network unfit to train says why in one
    line instead of failing in the loop: in training mode, batches of 2 and 3 (and of 1 where an epoch of
    `images` in batches of `batch_size` ends with one) give logits of the right shape, a finite loss, and
    gradients that reach a parameter. It runs on a copy, the random streams put back, so the run is the
    same as without it."""
    with user_code(spec, "copying it", every_error=True):
        probe = copy.deepcopy(model).train()
    last = images - (-(-images // batch_size) - 1) * batch_size
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        for n in (2, 3, 1) if last == 1 else (2, 3):
            try:
                _train_on(spec, probe, device, n)
            except CifarError as e:
                if n == 3 and "batch dimension" not in str(e):
                    raise CifarError(f"{e} (a batch of 2 worked: does forward assume a batch size? use x.flatten(1) "
                                     "or x.view(x.size(0), -1), not a fixed number)") from None
                if n == 1:
                    raise CifarError(f"{e}; with --batch-size {batch_size} each epoch of {images:,} images ends "
                                     f"with a batch of 1: choose another --batch-size, e.g. "
                                     f"{_no_single(images, batch_size)}") from None
                raise


def _train_on(spec: str, probe: nn.Module, device: torch.device, n: int) -> None:
    """One training-mode forward and backward pass of `probe` on a batch of `n` random images."""
    x = torch.randn(n, 3, 32, 32, device=device).contiguous(memory_format=memory_format(device))
    probe.zero_grad(set_to_none=True)
    with user_code(spec, f"in training mode, its forward pass on a batch of {n}", every_error=True):
        out = probe(x)
    _check_logits(spec, out, n, "in training mode, ")
    loss = F.cross_entropy(out.float(), torch.arange(n, device=device) % NUM_CLASSES)
    if not torch.isfinite(loss):
        raise CifarError(f"--model {spec}: in training mode its logits for {n} random images give a non-finite loss "
                         "(NaN or infinity): check forward for a division by zero, a log of 0 or an overflow")
    if loss.requires_grad:
        with user_code(spec, f"its backward pass on a batch of {n}", every_error=True):
            loss.backward()
    if not any(p.grad is not None for p in probe.parameters()):
        raise CifarError(f"--model {spec}: no gradient reaches its parameters, so training cannot change it: "
                         "forward must not detach its output or run under torch.no_grad(), and some parameters "
                         "must have requires_grad=True")


def _no_single(images: int, batch_size: int) -> int:
    """The batch size nearest `batch_size` that does not leave a last batch of 1 image."""
    for step in range(1, batch_size + 1):
        for size in (batch_size + step, batch_size - step):
            if 2 <= size and images % size != 1:
                return size
    return batch_size + 1
