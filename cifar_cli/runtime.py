"""Where and how a run executes: the device, this process's place in a torchrun job and the collectives
its processes call together, threads, AMP.

None of it changes a CPU run's result; on CUDA the autocast dtype is chosen by what the card can do.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from cifar_cli.errors import CifarError
from cifar_cli.settings import AUGMENT_PLACES, DEVICES, EVAL_BATCH_SIZE


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    world: int = 1
    local_world: int = 1  # processes on this machine

    @property
    def main(self) -> bool:
        return self.rank == 0

    def batch_share(self, batch_size: int) -> int:
        """Each process's part of a step's `batch_size` images: --batch-size is the whole step's, so a run
        takes the same steps, schedule and epochs on any number of GPUs."""
        if batch_size % self.world:
            raise CifarError(f"--batch-size {batch_size} is the whole step's batch, split evenly among the "
                             f"{self.world} processes: give a multiple of {self.world}")
        return batch_size // self.world


def sum_across(dist: Distributed, device: torch.device, *values: torch.Tensor | float) -> list[torch.Tensor]:
    """Element-wise sums over all processes (a no-op alone); every process must call it at the same point."""
    if dist.world == 1:
        return [torch.as_tensor(v) for v in values]
    packed = torch.stack([torch.as_tensor(v, device=device).double() for v in values])
    torch_dist.all_reduce(packed)
    return list(packed.unbind())


def gather_across(dist: Distributed, device: torch.device, *values: torch.Tensor | float) -> list[list[float]]:
    """Every process's values, in rank order (alone: its own); every process must call it at the same point."""
    mine = torch.stack([torch.as_tensor(v, device=device).double() for v in values])
    if dist.world == 1:
        return [mine.tolist()]
    parts = [torch.empty_like(mine) for _ in range(dist.world)]
    torch_dist.all_gather(parts, mine)
    return [p.tolist() for p in parts]


def min_across(dist: Distributed, value: torch.Tensor) -> torch.Tensor:
    """The smallest of every process's `value` (alone: its own), in place; every process must call it at the
    same point."""
    if dist.world > 1:
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MIN)
    return value


def once_per_machine(dist: Distributed, work: Callable[[], None]) -> None:
    """Run `work` (a download into a shared folder) in one process per machine, local rank 0, while the
    others wait for it. Its error is raised after the wait: the others then find its work missing."""
    failure: BaseException | None = None
    if dist.world == 1 or local_rank() == 0:
        try:
            work()
        except Exception as e:  # noqa: BLE001 - raised below, once every process has stopped waiting
            failure = e
    if dist.world > 1:
        torch_dist.barrier()
    if failure is not None:
        raise failure


def local_rank() -> int:
    """torchrun's LOCAL_RANK: which of this machine's processes we are (0 when run alone)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> Distributed:
    """Join the process group torchrun describes in the environment; alone, do nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=torch_dist.get_rank(), world=torch_dist.get_world_size(),
                       local_world=int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def shutdown_distributed(together: bool = False) -> None:
    """Leave the process group. `together`: when every process got here by the same path (a finished or
    stopped run), wait for all of them first, so that no process tears its connections down while
    another still uses them. Error paths leave without waiting: the others may never arrive."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        if together:
            torch_dist.barrier()
        torch_dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit choice that is not available is an error.

    Under torchrun each process takes the GPU of its LOCAL_RANK; more processes than GPUs is an error.
    """
    name = name.lower()
    mps = getattr(torch.backends, "mps", None)
    has_mps = bool(mps and mps.is_available())
    if name not in DEVICES:
        raise CifarError(f"--device {name}: choose one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CifarError(cuda_missing(torch.version.cuda))
    if name == "mps" and not has_mps:
        raise CifarError("--device mps: Apple MPS is not available on this machine (try --device auto or cpu)")
    if name == "cuda":
        index, count = local_rank(), torch.cuda.device_count()
        if index >= count:  # two processes on one GPU would silently halve its speed and share its memory
            raise CifarError(f"LOCAL_RANK {index} has no GPU of its own: this machine has {count}; "
                             f"start at most {count} processes per node (--nproc_per_node)")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


# The oldest Linux NVIDIA driver each CUDA major version runs on (NVIDIA's minor-version compatibility).
_DRIVER_FOR_CUDA = {"11": "450.80", "12": "525.60", "13": "580.65"}


def cuda_missing(built_for: str | None) -> str:
    """Why --device cuda cannot run, in one line, for a torch built for CUDA `built_for` (torch.version.cuda;
    None: a CPU-only build): the driver may be too old for it."""
    if built_for is None:
        return ("--device cuda: this torch is a CPU-only build; install a CUDA build (see docs/gpu.md), or use "
                "--device auto or cpu")
    driver = _DRIVER_FOR_CUDA.get(built_for.split(".")[0])
    needs = f", which needs NVIDIA driver >= {driver}" if driver else ""
    return (f"--device cuda: CUDA is not available on this machine; this torch is built for CUDA {built_for}"
            f"{needs} (nvidia-smi shows yours); for an older driver install an older CUDA build of torch (see "
            "docs/gpu.md), or use --device cpu")


def available_cpus() -> int:
    """The CPUs this process may run on (a container's or taskset's limit), not all the machine has."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def autocast_dtype(device_type: str, capability: tuple[int, int] | None, amp: bool | None) -> torch.dtype | None:
    """The autocast dtype for a device, or None for fp32.

    bf16 needs compute capability 8.0 (Ampere): below it cuDNN has no bf16 convolutions, although
    torch.cuda.is_bf16_supported() says yes (it counts emulation). Volta and Turing (7.x, the T4 of free
    notebooks) get fp16, which needs a GradScaler; older cards and other devices train in fp32.
    `amp` False turns it off; True or None (the default) take what the card can do, never more.
    """
    if amp is False or device_type != "cuda" or capability is None:
        return None
    if capability >= (8, 0):
        return torch.bfloat16
    if capability >= (7, 0):
        return torch.float16
    return None


PRETEND_CAPABILITY = "CIFAR_PRETEND_CAPABILITY"  # e.g. "7.5": test a T4's fp16 path on a newer card


def capability_in_use(real: tuple[int, int]) -> tuple[int, int]:
    """The card's compute capability, or the lower one $CIFAR_PRETEND_CAPABILITY pretends (never a higher one:
    that would choose a dtype the card lacks)."""
    pretend = os.environ.get(PRETEND_CAPABILITY, "").strip()
    if not pretend:
        return real
    major, dot, minor = pretend.partition(".")
    if not (major.isdigit() and minor.isdigit() and dot):
        raise CifarError(f"${PRETEND_CAPABILITY}={pretend[:20]!r}: expected a compute capability like 7.5")
    return min(real, (int(major), int(minor)))


def weakest_capability(dist: Distributed, device: torch.device) -> tuple[int, int] | None:
    """The lowest compute capability among all processes' GPUs (alone: this one's; None off CUDA), so that
    every process autocasts alike: fp16-scaled and bf16 gradients must not be averaged together."""
    if device.type != "cuda":
        return None
    major, minor = capability_in_use(torch.cuda.get_device_capability(device))
    weakest = int(min_across(dist, torch.tensor(major * 1000 + minor, device=device)).item())
    return divmod(weakest, 1000)


@dataclass(frozen=True)
class Runtime:
    """How a run executes. On the CPU only `augment_on` changes the result: the two augmentation paths
    run the same pipeline but draw their parameters from different random streams."""

    workers: int | None = None  # None: 0 on the CPU (the cores train), else up to 8 per GPU
    amp: bool | None = None  # None: autocast in the best dtype the GPU supports (autocast_dtype)
    compile: bool = False
    augment_on: str = "auto"  # AUGMENT_PLACES: auto is the GPU-resident path on CUDA, the loader elsewhere

    def augments_on_device(self, device: torch.device) -> bool:
        if self.augment_on not in AUGMENT_PLACES:
            raise CifarError(f"--augment-on {self.augment_on}: choose one of {', '.join(AUGMENT_PLACES)}")
        return self.augment_on == "device" or (self.augment_on == "auto" and device.type == "cuda")

    def loader_workers(self, device: torch.device, dist: Distributed) -> int:
        if self.workers is not None:
            return self.workers
        return 0 if device.type == "cpu" else min(8, max(1, available_cpus() // dist.local_world - 1))

    def amp_dtype(self, device: torch.device, dist: Distributed | None = None) -> torch.dtype | None:
        """The autocast dtype of a run on `device`; under torchrun every process must call it together."""
        return autocast_dtype(device.type, weakest_capability(dist or Distributed(), device), self.amp)

    def configure(self, device: torch.device, dist: Distributed) -> None:
        """Process-wide settings for a run on `device`; refuses --compile where it cannot build."""
        missing = missing_compiler(device.type) if self.compile else None
        if missing:
            raise CifarError(f"--compile needs {missing} to build the network's kernels on {device.type}, and "
                             "none was found; install one or run without --compile")
        if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # The thread count decides float summation order, so it must not follow --workers: same seed,
            # same run. Processes of one job share the cores.
            torch.set_num_threads(max(1, available_cpus() // dist.local_world))
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True


def eval_batch_size(device: torch.device) -> int:
    """Images per evaluation forward pass: on CUDA large enough that the card, not the launches, sets the
    pace; on the CPU the size its results were measured with (it changes speed, not results)."""
    return 2048 if device.type == "cuda" else EVAL_BATCH_SIZE


def out_of_memory(device: torch.device | str, where: str = "") -> CifarError:
    """The one line for a device that ran out of memory."""
    return CifarError(f"{device} ran out of memory{where}; try a smaller --batch-size, or free the memory "
                      "other programs hold on it")


def memory_format(device: torch.device) -> torch.memory_format:
    # channels_last: 1.4x faster training steps on the CPU (oneDNN), and what tensor cores want on CUDA.
    return torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format


def missing_compiler(device_type: str) -> str | None:
    """What torch.compile needs to build its kernels on this device, in words, when it cannot be found:
    on CUDA, Triton builds with a C compiler ($CC, gcc or clang); elsewhere Inductor with a C++ one ($CXX
    or g++, clang++ on macOS). None when it is there."""
    if device_type == "cuda":
        wanted = os.environ.get("CC")
        found = _runs(wanted) if wanted else bool(shutil.which("gcc") or shutil.which("clang"))
        return None if found else f"a C compiler ({'$CC=' + wanted if wanted else 'gcc or clang'})"
    wanted = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
    return None if _runs(wanted) else f"a C++ compiler ({'$CXX=' if os.environ.get('CXX') else ''}{wanted})"


def _runs(command: str) -> bool:
    """Whether `command` names a program that exists (a path, or a name on $PATH; $CC may carry flags)."""
    program = command.split()[0] if command.split() else ""
    return bool(program) and shutil.which(program) is not None


@contextmanager
def compile_errors(compiled: bool) -> Iterator[None]:
    """A torch.compile failure at the first step (it compiles lazily) becomes one line that says to drop --compile."""
    if not compiled:
        yield
        return
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError

    try:
        yield
    except (BackendCompilerFailed, InductorError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CifarError(f"--compile: torch.compile could not build the network ({reason[:300]}); "
                         "run without --compile") from None
