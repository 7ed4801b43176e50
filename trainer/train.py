"""The training loop: Adam (or SGD) on STBP's rate-MSE loss (or cross-entropy on counts) through
the surrogate-gradient backward pass, on HM2-BP's rate-coded loss and gradient (trainer.hm2bp),
on membrane-potential backpropagation's (trainer.mpbp), or on Lee et al. 2019's leak-corrected
spike-based backpropagation (trainer.lee2019).

Deterministic under `config.seed`: each epoch's shuffling and input encoding come from
random streams derived from (seed, epoch), so a run resumed from its end-of-epoch
checkpoint continues exactly as the uninterrupted run would.

Data-parallel on several processes when torchrun starts them (trainer.distributed): every
process draws the shuffle, the input spikes and lee2019's dropout masks of the whole global
batch (training.batch_size) from the same (seed, epoch) streams and trains on its contiguous
share; the gradient is the mean over the global batch, and the loss, accuracy and firing rates
are summed over the processes. N processes thus train the run one process trains (up to float
rounding), and a checkpoint resumes on any number of processes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from netgraph import Graph, final_potential
from netgraph.errors import ConfigError, TrainingError
from netgraph.limits import check_memory, memory_limit
from netgraph.provenance import derive_seed, package_versions
from spikedata import Dataset, Split, load_dataset
from trainer.checkpoint import (Checkpoint, CheckpointError, build_optimizer, check_optimizer_state, load_checkpoint,
                                save_checkpoint, trained_parameters, training_network)
from trainer.config import RunConfig
from trainer.distributed import SINGLE_PROCESS, DistributedContext, processes_of_launch
from trainer.encoding import EVAL_CHUNK, encode, iter_encoded_batches
from trainer import hm2bp, lee2019, mpbp
from trainer.network import NetworkOutput, SpikingNetwork

CHECKPOINT_NAME = "checkpoint.safetensors"
EVAL_BATCH = 256  # samples evaluate() runs through the network at once
_SHUFFLE_STREAM, _ENCODE_STREAM, _DROPOUT_STREAM = 0, 1, 2
# Methods that store their gradient in `.grad` themselves (no backward through the model):
# on several processes their gradients are summed by hand, the others' by DistributedDataParallel.
HAND_GRADIENT_METHODS = ("hm2bp", "mpbp")


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"training.device is {name!r} but no CUDA device is available")
    return device


def epoch_learning_rate(config: RunConfig, epoch: int) -> float:
    """The learning rate of epoch `epoch` (from 0) under training.lr_schedule."""
    base = config.training.learning_rate
    return base / math.sqrt(epoch + 1) if config.training.lr_schedule == "inverse_sqrt" else base


def loss_fn(kind: str, out: NetworkOutput, labels: torch.Tensor, num_classes: int,
            reduction: str = "mean") -> torch.Tensor:
    """'mse': paper eq. 9, 1/2 ||y - mean_t o[t]||^2 averaged over the batch (with a potential
    readout, the output's final potential over T in place of the rates: NetworkOutput.decoded).
    'ce': cross-entropy of the output spike counts (or final potentials) taken as logits.
    reduction 'sum': summed over the batch instead (a process's part of a global batch's mean)."""
    if kind == "mse":
        target = F.one_hot(labels, num_classes).to(out.decoded.dtype)
        per_sample = 0.5 * ((out.decoded - target) ** 2).sum(dim=1)
        return per_sample.sum() if reduction == "sum" else per_sample.mean()
    logits = out.output_spikes.sum(dim=1) if out.readout == "spikes" else final_potential(out.output_potential)
    return F.cross_entropy(logits, labels, reduction=reduction)


def method_forward(model: SpikingNetwork, input_spikes: torch.Tensor, config: RunConfig) -> NetworkOutput:
    """The spikes of the network as its training method runs it (its neuron variant)."""
    if config.training.method == "hm2bp":
        return hm2bp.forward(model, input_spikes, config.training.hm2bp)
    if config.training.method == "mpbp":
        return mpbp.forward(model, input_spikes, config.training.mpbp)
    return model(input_spikes)


@dataclass
class _Run:
    """What every step of a run uses. forward_model runs `model` on this process's share of
    a batch: DistributedDataParallel(model) for the methods trained by autograd on several
    processes, else `model` itself."""

    config: RunConfig
    model: SpikingNetwork
    forward_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    num_classes: int
    processes: DistributedContext
    eval_batch: int  # test samples evaluate() runs at once


@dataclass
class _Batch:
    """This process's part of one global batch of `global_size` samples: spikes (n, T, ...)
    and labels (n,) of its `local_size` samples, the global batch's `rows` (on one process,
    the whole batch). A share may be empty (a last batch smaller than the process count): the
    process still runs its forward and backward on no samples, which DistributedDataParallel
    needs of every process (its gradients are zeros)."""

    spikes: torch.Tensor
    labels: torch.Tensor
    global_size: int
    local_size: int
    rows: slice


def _method_gradients(model: SpikingNetwork, config: RunConfig, spikes: torch.Tensor, labels: torch.Tensor,
                      num_classes: int, dropout_rng: torch.Generator
                      ) -> tuple[torch.Tensor, NetworkOutput, list[mpbp.LayerRecord] | None]:
    """One batch of the configured method on one process, its gradient left in `.grad`:
    (loss, spikes, MPBP's records for after_step or None)."""
    method, records = config.training.method, None
    if method == "lee2019":
        loss, out = lee2019.train_step(model, spikes, labels, config.training.lee2019, dropout_rng)
    elif method == "mpbp":
        loss, out, records = mpbp.train_step(model, spikes, labels, config.training.mpbp)
    elif method == "hm2bp":
        loss, out = hm2bp.train_step(model, spikes, labels, config.training.hm2bp)
    else:
        out = model(spikes)
        loss = loss_fn(config.training.loss, out, labels, num_classes)
        loss.backward()
    return loss, out, records


def _train_step(run: _Run, batch: _Batch, epoch: int,
                dropout_rng: torch.Generator) -> tuple[torch.Tensor, NetworkOutput | None]:
    """One global batch, the optimizer's step included: (the batch's loss, as one process
    reports it; this process's spikes, None for an empty share of a hand-gradient method)."""
    config = run.config
    run.optimizer.zero_grad(set_to_none=True)
    if not run.processes.distributed:
        loss, out, records = _method_gradients(run.model, config, batch.spikes, batch.labels, run.num_classes,
                                               dropout_rng)
    elif config.training.method in HAND_GRADIENT_METHODS:
        loss, out, records = _hand_gradients_across(run, batch, dropout_rng)
    else:
        loss, out = _autograd_gradients_across(run, batch, dropout_rng)
        records = None
    if not torch.isfinite(loss):  # the loss is global: every process stops here alike
        raise TrainingError(f"loss became {float(loss.detach())} in epoch {epoch + 1}; lower the learning rate"
                            + (" or training.mpbp.weight_beta" if config.training.method == "mpbp" else ""))
    run.optimizer.step()
    if records is not None:  # MPBP's threshold regularization follows the step
        mpbp.after_step(run.model, records, config.training.mpbp)
    return loss, out


def _autograd_gradients_across(run: _Run, batch: _Batch,
                               dropout_rng: torch.Generator) -> tuple[torch.Tensor, NetworkOutput]:
    """The gradient of the global batch's loss by autograd through DistributedDataParallel:
    each process back-propagates its samples' summed loss times world_size / global_size
    (lee2019's loss is a sum over the batch: times world_size), which DDP's average over the
    processes turns into the global batch's mean (sum), whatever the shares' sizes."""
    config, processes = run.config, run.processes
    summed_loss = config.training.method == "lee2019"
    if summed_loss:  # the whole global batch's masks, this process's rows kept
        lee2019.draw_dropout_masks(run.model, batch.global_size, config.training.lee2019, dropout_rng, batch.rows)
    out = run.forward_model(batch.spikes)
    if summed_loss:
        local_sum = lee2019.sum_squared_error(out, batch.labels)
    else:
        local_sum = loss_fn(config.training.loss, out, batch.labels, run.num_classes, reduction="sum")
    weight = processes.world_size / (1 if summed_loss else batch.global_size)
    with processes.exchange("the backward pass (DDP sums the gradients over the processes in it)"):
        (local_sum * weight).backward()
    total = processes.sum_over_processes([float(local_sum.detach())])[0]
    return torch.tensor(total if summed_loss else total / batch.global_size), out


def _hand_gradients_across(run: _Run, batch: _Batch, dropout_rng: torch.Generator
                           ) -> tuple[torch.Tensor, NetworkOutput | None, list[mpbp.LayerRecord] | None]:
    """HM2-BP's or MPBP's gradient of the global batch: each process's batch mean weighted by
    its share of the samples, summed over the processes (the loss alike); MPBP's threshold
    regularization gets the global batch's mean spike counts."""
    processes, weight = run.processes, batch.local_size / batch.global_size
    loss, out, records = torch.zeros(()), None, None
    if batch.local_size:
        loss, out, records = _method_gradients(run.model, run.config, batch.spikes, batch.labels, run.num_classes,
                                               dropout_rng)
    processes.all_reduce_gradients(trained_parameters(run.model), weight)
    loss = torch.tensor(processes.sum_over_processes([float(loss) * weight])[0])
    if run.config.training.method == "mpbp":
        records = _global_mean_counts(run, records, batch)
    return loss, out, records


def _global_mean_counts(run: _Run, records: list[mpbp.LayerRecord] | None, batch: _Batch
                        ) -> list[mpbp.LayerRecord]:
    """MPBP records whose spikes are the global batch's mean spike count per neuron, as one
    sample of one step (1, 1, I): mpbp.regularize_thresholds reads only spikes.sum(1).mean(0),
    so every process applies the threshold regularization of the whole batch."""
    layers = run.model.dense_chain()
    if records is None:  # an empty share: no spikes to add
        local = [torch.zeros(layer.population.neurons, device=layer.weight.device) for layer in layers]
    else:
        local = [record.spikes.sum(1).sum(0) for record in records]
    means = run.processes.all_reduce_sum_(torch.cat(local)) / batch.global_size
    return [mpbp.LayerRecord(torch.zeros(1, 1, 0, device=mean.device), mean.view(1, 1, -1), layer.population,
                             layer.weight.detach())
            for layer, mean in zip(layers, means.split([layer.population.neurons for layer in layers]))]


def _new_model(config: RunConfig, input_shape: tuple[int, ...], device: torch.device) -> SpikingNetwork:
    """The configured network, initialised as its training method does it, on `device`."""
    return training_network(config, input_shape).to(device)


def _optimizer(model: SpikingNetwork, config: RunConfig) -> torch.optim.Optimizer:
    """training.optimizer over the trained parameters (a frozen bias is not one)."""
    return build_optimizer(trained_parameters(model), config.training)


def _evaluation_batch(config: RunConfig, model: SpikingNetwork, processes: DistributedContext) -> int:
    """Refuses before the first epoch a run whose training batch could not fit in
    memory_limit(), and returns how many test samples evaluate() may run at once (at most
    EVAL_BATCH). The estimate is a lower bound every method's forward pass holds: one float32
    per input value and per neuron, per step and sample (and the test inputs encoded
    trainer.encoding.EVAL_CHUNK at a time). On several processes each holds the input spikes
    of the whole global batch and runs the neurons of its share."""
    steps, inputs = config.encoding.time_steps, math.prod(model.input_shape)
    neurons = sum(p.neurons for p in model.graph.populations)
    batch, share = config.training.batch_size, processes.largest_share(config.training.batch_size)
    per_process = f" ({share} per process)" if processes.distributed else ""
    check_memory(4 * steps * (inputs * batch + neurons * share),
                 f"{config.source}: one training batch of {batch} samples{per_process} x {steps} steps "
                 "(training.batch_size, encoding.time_steps)")
    per_sample = 4 * steps * (inputs + neurons)
    check_memory(4 * steps * EVAL_CHUNK * inputs, f"{config.source}: encoding {EVAL_CHUNK} test samples x {steps} "
                                                  "steps at a time (encoding.time_steps)")
    return max(1, min(EVAL_BATCH, memory_limit() // per_sample))


def _spike_rates(out: NetworkOutput) -> np.ndarray:
    """Per population, its spikes summed over the batch over its neurons and steps per sample."""
    return np.array([float(s.sum()) / s[0].numel() for s in out.population_spikes.values()])


@torch.no_grad()
def evaluate(
    model: SpikingNetwork, config: RunConfig, split: Split, device: torch.device,
    batch_size: int = EVAL_BATCH, processes: DistributedContext = SINGLE_PROCESS, progress: bool = False,
) -> dict[str, Any]:
    """Test accuracy and mean firing rate per layer on the fixed evaluation encoding. On
    several processes each encodes every chunk of the test set (the same spikes) and runs its
    share of it; the counts are summed over the processes. progress: a bar of test samples."""
    model.eval()
    correct, rates = 0, np.zeros(len(model.graph.populations))
    bar = tqdm(total=len(split.labels), desc="evaluating", unit="sample", disable=not progress, leave=False)
    for window, spikes in iter_encoded_batches(
        config.encoding.kind, split.inputs, config.encoding.time_steps, config.training.eval_seed
    ):
        share = processes.share(len(spikes))
        for start in range(share.start, share.stop, batch_size):
            stop = min(start + batch_size, share.stop)
            batch = spikes[start:stop].to(device)
            labels = torch.from_numpy(split.labels[window][start:stop]).to(device)
            out = method_forward(model, batch, config)
            correct += int((out.predictions == labels).sum())
            rates += _spike_rates(out)
        bar.update(len(spikes))
    bar.close()
    if processes.distributed:
        totals = processes.sum_over_processes([correct, *rates])
        correct, rates = int(totals[0]), totals[1:]
    n = len(split.labels)
    return {"accuracy": correct / n, "firing_rates": (rates / n).tolist()}


@dataclass
class TrainResult:
    """rank, world_size: this process's place among the data-parallel processes that trained
    (trainer.distributed; each returns the same model and history, rank 0 wrote the checkpoint)."""

    model: SpikingNetwork
    history: list[dict[str, Any]]
    checkpoint_path: Path
    dataset: Dataset
    rank: int = 0
    world_size: int = 1


def _compatible_for_resume(saved: RunConfig, requested: RunConfig) -> list[str]:
    """Keys whose change would make a resumed run differ from the uninterrupted one."""
    a, b = saved.to_dict(), requested.to_dict()
    for cfg in (a, b):
        cfg["training"] = {k: v for k, v in cfg["training"].items() if k not in ("epochs", "device")}
        cfg.pop("output_dir")
    return [k for k in a if a[k] != b[k]]


def _training_data(config: RunConfig) -> tuple[Dataset, tuple[int, ...]]:
    """The configured data set (limits applied) and one sample's input shape at one step."""
    dataset = load_dataset(config.data.name, config.data.path, config.encoding.time_steps, config.data.dataset)
    dataset = dataclasses.replace(
        dataset,
        train=dataset.train.head(config.data.train_limit),
        test=dataset.test.head(config.data.test_limit),
    )
    last = config.model.layers[-1]
    if last.type == "dense" and last.units != dataset.num_classes:
        raise ConfigError(
            f"the last layer has {last.units} units but dataset "
            f"{dataset.name!r} has {dataset.num_classes} classes (model.layers[-1].units)"
        )
    if config.encoding.kind == "events" and dataset.train.inputs.ndim < 5:
        raise ConfigError(f"encoding.kind 'events' needs an event data set, {dataset.name!r} is static images")
    if config.encoding.kind == "bernoulli" and dataset.train.inputs.ndim != 4:
        raise ConfigError(f"encoding.kind 'bernoulli' needs static images, {dataset.name!r} holds event frames")
    input_shape = dataset.input_shape if config.encoding.kind == "bernoulli" else dataset.input_shape[1:]
    return dataset, input_shape


def _check_same_checkpoint(resume: str | Path, processes: DistributedContext) -> None:
    """Every process reads the checkpoint itself (on several machines, from a shared file
    system or a copy on each): refuses copies that differ, which would start the processes
    from different weights or optimizer states."""
    if processes.distributed and not processes.same_everywhere(hashlib.sha256(Path(resume).read_bytes()).hexdigest()):
        raise CheckpointError(f"{resume}: the processes read different files under this name (a stale copy on one "
                              "machine?); resume from one file every machine reads")


def _resume(resume: str | Path, config: RunConfig, model: SpikingNetwork, optimizer,
            log: Callable[[str], None], processes: DistributedContext) -> tuple[int, list[dict[str, Any]]]:
    """Loads a checkpoint into the model and optimizer: (epochs completed, history). Every
    check runs here, before the first epoch: load_checkpoint's (the whole file against the
    network its own config builds), then the fit to this run's config, data and optimizer."""
    saved = load_checkpoint(resume)
    _check_same_checkpoint(resume, processes)
    changed = _compatible_for_resume(saved.config, config)
    if changed:
        raise CheckpointError(
            f"{resume}: cannot resume, the config differs in {', '.join(changed)} "
            "(only training.epochs, training.device and output_dir may change)"
        )
    if tuple(saved.input_shape) != tuple(model.input_shape):
        raise CheckpointError(f"{resume}: its network reads inputs of shape {saved.input_shape}, but this run's data "
                              f"set gives {model.input_shape}")
    if saved.optimizer_state is None and saved.epochs_completed > 0:
        raise CheckpointError(f"{resume}: holds no optimizer state after {saved.epochs_completed} epoch(s); resuming "
                              "would not continue the run (train from the start instead)")
    if saved.optimizer_state is not None:
        check_optimizer_state(saved.optimizer_state, optimizer, str(resume))
    try:
        model.load_state_dict(saved.model_state)
        if saved.optimizer_state is not None:
            optimizer.load_state_dict(saved.optimizer_state)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{resume}: its weights or optimizer state do not fit the configured network: "
                              f"{exc}") from exc
    trained_on = f", trained on {saved.world_size} process(es)" if saved.world_size else ""
    log(f"resuming from {resume} after epoch {saved.epochs_completed}{trained_on}")
    return saved.epochs_completed, saved.history


def _epoch_streams(config: RunConfig, epoch: int, n_train: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Generator, torch.Generator]:
    """The epoch's shuffled order of the training samples and its encoding and dropout
    generators, from (seed, epoch) alone: the same on every process. Nothing in training
    draws from a stream of its own process (no rank-derived seed is needed): every draw is
    made for the whole global batch, and each process keeps its share."""
    order = torch.randperm(
        n_train, generator=torch.Generator().manual_seed(derive_seed(config.seed, epoch, _SHUFFLE_STREAM))
    ).to(device)
    encoder_rng = torch.Generator(device=device).manual_seed(derive_seed(config.seed, epoch, _ENCODE_STREAM))
    dropout_rng = torch.Generator(device=device).manual_seed(derive_seed(config.seed, epoch, _DROPOUT_STREAM))
    return order, encoder_rng, dropout_rng


def _local_batch(run: _Run, spikes: torch.Tensor, labels: torch.Tensor) -> _Batch:
    """This process's share of a global batch (spikes (B, T, ...), labels (B,)), see _Batch."""
    share = run.processes.share(len(labels))
    return _Batch(spikes[share], labels[share], len(labels), share.stop - share.start, share)


def _train_epoch(run: _Run, inputs: torch.Tensor, labels: torch.Tensor, epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the training set in the epoch's own shuffled order and input spikes.
    Loss, accuracy and firing rates are those of the whole global batches (all processes)."""
    config = run.config
    run.forward_model.train()  # the model (and its DistributedDataParallel wrapper)
    n_train, batch_size = len(labels), config.training.batch_size
    order, encoder_rng, dropout_rng = _epoch_streams(config, epoch, n_train, inputs.device)
    loss_sum, correct, rates = 0.0, 0, np.zeros(len(run.model.graph.populations))
    started = time.perf_counter()
    bar = tqdm(range(0, n_train, batch_size), desc=f"epoch {epoch + 1}/{config.training.epochs}", unit="batch",
               disable=not progress, leave=False)
    for start in bar:
        index = order[start : start + batch_size]
        # The whole global batch's spikes on every process: the draws one process makes.
        spikes = encode(config.encoding.kind, inputs[index], config.encoding.time_steps, encoder_rng)
        batch = _local_batch(run, spikes, labels[index])
        loss, out = _train_step(run, batch, epoch, dropout_rng)
        loss_sum += float(loss.detach()) * len(index)
        if batch.local_size:
            with torch.no_grad():
                correct += int((out.predictions == batch.labels).sum())
                rates += _spike_rates(out)
        bar.set_postfix(loss=f"{loss_sum / min(start + batch_size, n_train):.4f}")
    elapsed = time.perf_counter() - started
    if run.processes.distributed:
        totals = run.processes.sum_over_processes([correct, *rates])
        correct, rates = int(totals[0]), totals[1:]
    return {"epoch": epoch + 1, "loss": loss_sum / n_train, "train_accuracy": correct / n_train,
            "train_firing_rates": (rates / n_train).tolist(), "train_samples_per_s": n_train / elapsed}


def _save_epoch(run: _Run, path: Path, dataset: Dataset, input_shape: tuple[int, ...], epochs_completed: int,
                history: list[dict[str, Any]], versions: dict[str, str]) -> None:
    """The end-of-epoch checkpoint, written once, by rank 0 (atomically); the other
    processes wait until it is complete."""
    if run.processes.is_main:
        save_checkpoint(
            path,
            Checkpoint(
                config=run.config, input_shape=input_shape, num_classes=dataset.num_classes,
                epochs_completed=epochs_completed,
                model_state={k: v.detach().cpu() for k, v in run.model.state_dict().items()},
                optimizer_state=run.optimizer.state_dict(), history=history, versions=versions,
                world_size=run.processes.world_size,
            ),
        )
    run.processes.barrier()


def _log_epoch(log: Callable[[str], None], record: dict[str, Any], epochs: int) -> None:
    rates_text = " ".join(f"{r:.3f}" for r in record["test_firing_rates"])
    log(
        f"epoch {record['epoch']:3d}/{epochs}  loss {record['loss']:.4f}  "
        f"train acc {100 * record['train_accuracy']:6.2f}%  "
        f"test acc {100 * record['test_accuracy']:6.2f}%  "
        f"firing rate/population [{rates_text}]  {record['train_samples_per_s']:.0f} samples/s"
    )


def train(
    config: RunConfig,
    resume: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    inspect: Callable[[Graph], None] | None = None,
) -> TrainResult:
    """Trains (or resumes) the run described by `config`; writes a checkpoint each epoch.
    inspect(graph), if given, sees the network's graph before the first epoch (the CLI
    warns there about networks Lava cannot run with their trained timing).

    Started by torchrun (WORLD_SIZE > 1), it trains as one of the data-parallel processes
    (trainer.distributed): training.batch_size is the global batch, rank 0 logs, shows the
    progress and writes the checkpoint, and every process returns the same model and history."""
    with processes_of_launch(select_device(config.training.device)) as processes:
        return _train(config, resume, progress and processes.is_main, processes.on_main(log),
                      inspect if processes.is_main else None, processes)


def _prepared_run(config: RunConfig, resume: str | Path | None, log: Callable[[str], None],
                  inspect: Callable[[Graph], None] | None, processes: DistributedContext
                  ) -> tuple[_Run, Dataset, tuple[int, ...], int, list[dict[str, Any]]]:
    """The run ready for its first epoch, every check passed: (run, data set, input shape,
    epochs completed, history)."""
    dataset, input_shape = _training_data(config)
    torch.manual_seed(config.seed)  # every process builds the same network
    model = _new_model(config, input_shape, processes.device)
    if inspect is not None:
        inspect(model.graph)
    if model.num_outputs != dataset.num_classes:
        raise ConfigError(f"the network has {model.num_outputs} output neurons but dataset {dataset.name!r} "
                         f"has {dataset.num_classes} classes")
    eval_batch = _evaluation_batch(config, model, processes)
    optimizer = _optimizer(model, config)
    start_epoch, history = 0, []
    if resume is not None:
        start_epoch, history = _resume(resume, config, model, optimizer, log, processes)
    if config.training.method == "hm2bp":
        hm2bp.prepare(model)
    autograd = config.training.method not in HAND_GRADIENT_METHODS
    forward_model = processes.data_parallel(model) if autograd else model
    run = _Run(config, model, forward_model, optimizer, dataset.num_classes, processes, eval_batch)
    return run, dataset, input_shape, start_epoch, history


def _train(config: RunConfig, resume: str | Path | None, progress: bool, log: Callable[[str], None],
           inspect: Callable[[Graph], None] | None, processes: DistributedContext) -> TrainResult:
    """train() on this process, among `processes`."""
    run, dataset, input_shape, start_epoch, history = _prepared_run(config, resume, log, inspect, processes)
    if processes.distributed:
        log(f"data-parallel on {processes.describe()}: global batch {config.training.batch_size} "
            f"(training.batch_size), {processes.describe_shares(config.training.batch_size)} samples per process")
    checkpoint_path = Path(config.output_dir) / CHECKPOINT_NAME
    train_inputs = torch.from_numpy(dataset.train.inputs).to(processes.device)
    train_labels = torch.from_numpy(dataset.train.labels).to(processes.device)
    versions = package_versions()
    for epoch in range(start_epoch, config.training.epochs):
        for group in run.optimizer.param_groups:  # from the epoch alone, so a resumed run continues the schedule
            group["lr"] = epoch_learning_rate(config, epoch)
        record = _train_epoch(run, train_inputs, train_labels, epoch, progress)
        test = evaluate(run.model, config, dataset.test, processes.device, run.eval_batch, processes, progress)
        record = {"epoch": record["epoch"], "loss": record["loss"], "train_accuracy": record["train_accuracy"],
                  "test_accuracy": test["accuracy"], "train_firing_rates": record["train_firing_rates"],
                  "test_firing_rates": test["firing_rates"], "train_samples_per_s": record["train_samples_per_s"]}
        history.append(record)
        _save_epoch(run, checkpoint_path, dataset, input_shape, epoch + 1, history, versions)
        _log_epoch(log, record, config.training.epochs)
    return TrainResult(run.model.cpu().eval(), history, checkpoint_path, dataset, processes.rank,
                       processes.world_size)
