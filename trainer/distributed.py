"""Data-parallel training on several processes (GPUs, machines) with PyTorch's own engine.

`torchrun` starts the processes and sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT in each; `processes_of_launch` reads them, joins the process group (NCCL on
CUDA, each process on GPU `cuda:LOCAL_RANK`; gloo on CPU) and leaves it again when training
ends, however it ends. Without those variables (or with WORLD_SIZE 1) it is one process,
and every helper here does nothing.

The run state is global (trainer.train): every process draws the same shuffle, input spikes
and dropout masks for the whole global batch from the (seed, epoch) streams and takes its
own contiguous share (`share`); the gradients are the mean over the global batch. What the
processes must agree on is summed here (`sum_over_processes`, `all_reduce_gradients`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.parallel import DistributedDataParallel

from netgraph.errors import ConfigError, TrainingError, UsageError, one_line

# The longest one process waits for the others in a collective: a process that fails or
# hangs ends the others' waits with an error after this, never an endless wait (torchrun
# also ends the other processes as soon as one exits with an error). The processes run in
# lockstep (the test set is sharded too); only rank 0's checkpoint write is theirs alone.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place among the processes training one run: rank (0 to world_size - 1,
    rank 0 logs and writes the checkpoint), local_rank (its index on its machine: its GPU),
    device (where it trains) and backend ('nccl', 'gloo'; None for one process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, size: int) -> slice:
        """This process's contiguous part of `size` items (a global batch, a test chunk): the
        processes' parts follow each other in rank order and differ in size by at most 1
        (the lower ranks take the extra items); a part may be empty when size < world_size."""
        base, extra = divmod(size, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))

    def largest_share(self, size: int) -> int:
        """The most items `share` gives any process (rank 0's)."""
        return -(-size // self.world_size)

    def describe_shares(self, size: int) -> str:
        """'16' or '12 to 13': the items `share` gives the processes."""
        smallest, largest = size // self.world_size, self.largest_share(size)
        return str(largest) if smallest == largest else f"{smallest} to {largest}"

    def on_main(self, function: Callable[[str], None]) -> Callable[[str], None]:
        """`function` on rank 0, a function doing nothing on the others (log lines once)."""
        return function if self.is_main else _ignore

    @contextlib.contextmanager
    def exchange(self, what: str) -> Iterator[None]:
        """Turns the failure of the collective(s) in the block (`what`) into one line: another
        process ended (its own error says why) or stalled past COLLECTIVE_TIMEOUT. Gloo and
        NCCL report it as a RuntimeError; running out of memory stays what it is."""
        try:
            yield
        except torch.OutOfMemoryError:
            raise
        except RuntimeError as exc:
            if not self.distributed:
                raise
            raise TrainingError(f"process {self.rank} of {self.world_size}: {what} failed (when another process "
                                "ended, its own error says why; or one stalled past "
                                f"{COLLECTIVE_TIMEOUT.total_seconds():.0f} s): {one_line(exc)[:300]}") from exc

    def barrier(self) -> None:
        """Waits until every process is here (e.g. until rank 0 has written the checkpoint)."""
        if self.distributed:
            with self.exchange("waiting for the other processes"):
                dist.barrier(device_ids=[self.device.index] if self.backend == "nccl" else None)

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sums `tensor` (on this process's device) over the processes, in place; returns it."""
        if self.distributed:
            with self.exchange("summing over the processes"):
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_over_processes(self, values: Iterable[float]) -> np.ndarray:
        """The sums over the processes of a few numbers (counts, loss sums), in float64 (exact
        for counts below 2**53), the same array on every process."""
        local = torch.as_tensor(np.asarray(list(values), dtype=np.float64), device=self.device)
        return self.all_reduce_sum_(local).cpu().numpy()

    def all_reduce_gradients(self, parameters: list[torch.nn.Parameter], weight: float) -> None:
        """For methods that fill `.grad` by hand: each parameter's gradient becomes the sum over
        the processes of weight * .grad, weight = this process's share of the global batch
        (local samples / global samples), i.e. the gradient of the mean over the global
        batch. A gradient left None on every process stays None (the optimizer skips it, as
        on one process); one process's None counts as zeros (it trained no sample). One
        collective for all parameters."""
        if not self.distributed or not parameters:
            return
        flat = [(p.grad * weight if p.grad is not None else torch.zeros_like(p)).flatten() for p in parameters]
        present = torch.tensor([float(p.grad is not None) for p in parameters], device=self.device)
        summed = self.all_reduce_sum_(torch.cat(flat + [present.to(flat[0].dtype)]))
        values, any_present = summed[:-len(parameters)], summed[-len(parameters):]
        for parameter, value, has_grad in zip(parameters, values.split([p.numel() for p in parameters]),
                                              any_present.tolist()):
            parameter.grad = value.view_as(parameter).clone() if has_grad > 0 else None

    def same_everywhere(self, text: str) -> bool:
        """Whether every process holds the same `text` (e.g. the digest of a file each read)."""
        if not self.distributed:
            return True
        gathered: list[str | None] = [None] * self.world_size
        with self.exchange("comparing with the other processes"):
            dist.all_gather_object(gathered, text)
        return all(item == text for item in gathered)

    def data_parallel(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module whose forward and backward train `model` on this process's share: on
        several processes DistributedDataParallel (its backward sums the gradients over the
        processes and divides by their number, overlapped with the backward pass; the
        loss must be scaled for that: trainer.train), on one `model` itself. It starts every
        process from rank 0's parameters and buffers; buffers are not synchronised again
        before each forward, since nothing on this path changes them."""
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        with self.exchange("broadcasting rank 0's weights"):
            return DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)

    def describe(self) -> str:
        return f"{self.world_size} processes ({self.backend} on {self.device.type})"


def _ignore(_: str) -> None:
    pass


SINGLE_PROCESS = DistributedContext()


@dataclass(frozen=True)
class Launch:
    """What torchrun told this process: rank, world size, local rank, local world size."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def _integer_variable(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None or not text.strip():
        if default is not None:
            return default
        raise UsageError(f"environment variable {name} is missing, but WORLD_SIZE is set: start the processes with "
                         "torchrun (README: Training on several processes)")
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"environment variable {name} must be an integer, got {text!r}") from None


def launch_from_environment() -> Launch | None:
    """torchrun's variables of this process, None when it was not started by a launcher."""
    if "WORLD_SIZE" not in os.environ:
        return None
    world_size = _integer_variable("WORLD_SIZE")
    rank = _integer_variable("RANK")
    local_rank = _integer_variable("LOCAL_RANK", default=rank)
    local_world_size = _integer_variable("LOCAL_WORLD_SIZE", default=world_size)
    if world_size < 1 or not 0 <= rank < world_size or not 0 <= local_rank < local_world_size:
        raise UsageError(f"environment variables WORLD_SIZE={world_size}, RANK={rank}, LOCAL_RANK={local_rank}, "
                         f"LOCAL_WORLD_SIZE={local_world_size} do not fit together (0 <= RANK < WORLD_SIZE)")
    return Launch(rank, world_size, local_rank, local_world_size)


def launched_rank() -> int:
    """This process's rank among the processes a launcher started (0 without a launcher)."""
    launch = launch_from_environment()
    return 0 if launch is None else launch.rank


def process_device(device: torch.device, launch: Launch) -> torch.device:
    """The device of this process: CPU, or GPU cuda:LOCAL_RANK (one process per GPU)."""
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigError(f"training.device {str(device)!r}: training on several processes runs on 'cpu' (gloo) "
                          "or 'cuda' (NCCL)")
    if device.index is not None and launch.local_world_size > 1:
        raise ConfigError(f"training.device {str(device)!r} names one GPU, but torchrun started "
                          f"{launch.local_world_size} processes on this machine, one per GPU: set it to 'cuda' or "
                          "'auto' (process LOCAL_RANK trains on cuda:LOCAL_RANK)")
    index = launch.local_rank if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise TrainingError(f"process LOCAL_RANK={launch.local_rank} needs GPU cuda:{index}, but this machine has "
                            f"{torch.cuda.device_count()}: start at most that many processes per machine "
                            "(torchrun --nproc_per_node)")
    return torch.device("cuda", index)


def _join(backend: str, launch: Launch) -> None:
    missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UsageError(f"environment variable {missing[0]} is missing, but WORLD_SIZE is set: start the processes "
                         "with torchrun (README: Training on several processes)")
    try:
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    except (RuntimeError, ValueError) as exc:  # DistNetworkError and DistStoreError are RuntimeErrors
        raise TrainingError(f"process {launch.rank} of {launch.world_size} could not join the others at "
                            f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({backend}): "
                            f"{one_line(exc)[:300]}") from exc


@contextlib.contextmanager
def processes_of_launch(device: torch.device) -> Iterator[DistributedContext]:
    """The processes this one trains with, from torchrun's environment (one process, on
    `device`, without it). Joins the process group, and leaves it (destroys it) when the block
    ends, also on an error or an interrupt. A process group the caller initialised itself is
    used as it is and left to the caller."""
    if dist.is_available() and dist.is_initialized():
        launch = Launch(dist.get_rank(), dist.get_world_size(), _integer_variable("LOCAL_RANK", default=0),
                        _integer_variable("LOCAL_WORLD_SIZE", default=1))
        yield DistributedContext(launch.rank, launch.world_size, launch.local_rank,
                                 process_device(device, launch), dist.get_backend())
        return
    launch = launch_from_environment()
    if launch is None or launch.world_size == 1:
        yield DistributedContext(device=device)
        return
    if not dist.is_available():
        raise TrainingError("this PyTorch build has no torch.distributed: train on one process")
    device = process_device(device, launch)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    _join(backend, launch)
    try:
        yield DistributedContext(launch.rank, launch.world_size, launch.local_rank, device, backend)
    finally:
        dist.destroy_process_group()
