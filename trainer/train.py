"""The training loop: Adam (or SGD) on STBP's rate-MSE loss (or cross-entropy on counts) through
the surrogate-gradient backward pass, on HM2-BP's rate-coded loss and gradient (trainer.hm2bp),
on membrane-potential backpropagation's (trainer.mpbp), or on Lee et al. 2019's leak-corrected
spike-based backpropagation (trainer.lee2019).

Deterministic under `config.seed`: each epoch's shuffling and input encoding come from
random streams derived from (seed, epoch), so a run resumed from its end-of-epoch
checkpoint continues exactly as the uninterrupted run would.
"""
from __future__ import annotations

import dataclasses
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
from trainer.encoding import EVAL_CHUNK, encode, iter_encoded_batches
from trainer import hm2bp, lee2019, mpbp
from trainer.network import NetworkOutput, SpikingNetwork

CHECKPOINT_NAME = "checkpoint.safetensors"
EVAL_BATCH = 256  # samples evaluate() runs through the network at once
_SHUFFLE_STREAM, _ENCODE_STREAM, _DROPOUT_STREAM = 0, 1, 2


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


def loss_fn(kind: str, out: NetworkOutput, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """'mse': paper eq. 9, 1/2 ||y - mean_t o[t]||^2 averaged over the batch (with a potential
    readout, the output's final potential over T in place of the rates: NetworkOutput.decoded).
    'ce': cross-entropy of the output spike counts (or final potentials) taken as logits."""
    if kind == "mse":
        target = F.one_hot(labels, num_classes).to(out.decoded.dtype)
        return 0.5 * ((out.decoded - target) ** 2).sum(dim=1).mean()
    logits = out.output_spikes.sum(dim=1) if out.readout == "spikes" else final_potential(out.output_potential)
    return F.cross_entropy(logits, labels)


def method_forward(model: SpikingNetwork, input_spikes: torch.Tensor, config: RunConfig) -> NetworkOutput:
    """The spikes of the network as its training method runs it (its neuron variant)."""
    if config.training.method == "hm2bp":
        return hm2bp.forward(model, input_spikes, config.training.hm2bp)
    if config.training.method == "mpbp":
        return mpbp.forward(model, input_spikes, config.training.mpbp)
    return model(input_spikes)


def _train_step(model: SpikingNetwork, optimizer, config: RunConfig, spikes: torch.Tensor, labels: torch.Tensor,
                num_classes: int, epoch: int, dropout_rng: torch.Generator) -> tuple[torch.Tensor, NetworkOutput]:
    """One batch of the configured method, the optimizer's step included: (loss, spikes)."""
    method, records = config.training.method, None
    optimizer.zero_grad(set_to_none=True)
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
    if not torch.isfinite(loss):
        raise TrainingError(f"loss became {float(loss)} in epoch {epoch + 1}; lower the learning rate"
                                 + (" or training.mpbp.weight_beta" if method == "mpbp" else ""))
    optimizer.step()
    if records is not None:  # MPBP's threshold regularization follows the step
        mpbp.after_step(model, records, config.training.mpbp)
    return loss, out


def _new_model(config: RunConfig, input_shape: tuple[int, ...], device: torch.device) -> SpikingNetwork:
    """The configured network, initialised as its training method does it, on `device`."""
    return training_network(config, input_shape).to(device)


def _optimizer(model: SpikingNetwork, config: RunConfig) -> torch.optim.Optimizer:
    """training.optimizer over the trained parameters (a frozen bias is not one)."""
    return build_optimizer(trained_parameters(model), config.training)


def _evaluation_batch(config: RunConfig, model: SpikingNetwork) -> int:
    """Refuses before the first epoch a run whose training batch could not fit in
    memory_limit(), and returns how many test samples evaluate() may run at once (at most
    EVAL_BATCH). The estimate is a lower bound every method's forward pass holds: one float32
    per input value and per neuron, per step and sample (and the test inputs encoded
    trainer.encoding.EVAL_CHUNK at a time)."""
    steps, inputs = config.encoding.time_steps, math.prod(model.input_shape)
    per_sample = 4 * steps * (inputs + sum(p.neurons for p in model.graph.populations))
    check_memory(per_sample * config.training.batch_size,
                 f"{config.source}: one training batch of {config.training.batch_size} samples x {steps} steps "
                 "(training.batch_size, encoding.time_steps)")
    check_memory(4 * steps * EVAL_CHUNK * inputs, f"{config.source}: encoding {EVAL_CHUNK} test samples x {steps} "
                                                  "steps at a time (encoding.time_steps)")
    return max(1, min(EVAL_BATCH, memory_limit() // per_sample))


@torch.no_grad()
def evaluate(
    model: SpikingNetwork, config: RunConfig, split: Split, device: torch.device,
    batch_size: int = EVAL_BATCH,
) -> dict[str, Any]:
    """Test accuracy and mean firing rate per layer on the fixed evaluation encoding."""
    model.eval()
    correct, rates = 0, np.zeros(len(model.graph.populations))
    for window, spikes in iter_encoded_batches(
        config.encoding.kind, split.inputs, config.encoding.time_steps, config.training.eval_seed
    ):
        for start in range(0, len(spikes), batch_size):
            batch = spikes[start : start + batch_size].to(device)
            labels = torch.from_numpy(split.labels[window][start : start + batch_size]).to(device)
            out = method_forward(model, batch, config)
            correct += int((out.predictions == labels).sum())
            rates += np.array([float(s.sum()) / s[0].numel() for s in out.population_spikes.values()])
    n = len(split.labels)
    return {"accuracy": correct / n, "firing_rates": (rates / n).tolist()}


@dataclass
class TrainResult:
    model: SpikingNetwork
    history: list[dict[str, Any]]
    checkpoint_path: Path
    dataset: Dataset


def _compatible_for_resume(saved: RunConfig, requested: RunConfig) -> list[str]:
    """Keys whose change would make a resumed run differ from the uninterrupted one."""
    a, b = saved.to_dict(), requested.to_dict()
    for cfg in (a, b):
        cfg["training"] = {k: v for k, v in cfg["training"].items() if k not in ("epochs", "device")}
        cfg.pop("output_dir")
    return [k for k in a if a[k] != b[k]]


def _training_data(config: RunConfig) -> tuple[Dataset, tuple[int, ...]]:
    """The configured data set (limits applied) and one sample's input shape at one step."""
    dataset = load_dataset(config.data.name, config.data.path, config.encoding.time_steps)
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


def _resume(resume: str | Path, config: RunConfig, model: SpikingNetwork, optimizer,
            log: Callable[[str], None]) -> tuple[int, list[dict[str, Any]]]:
    """Loads a checkpoint into the model and optimizer: (epochs completed, history). Every
    check runs here, before the first epoch: load_checkpoint's (the whole file against the
    network its own config builds), then the fit to this run's config, data and optimizer."""
    saved = load_checkpoint(resume)
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
    log(f"resuming from {resume} after epoch {saved.epochs_completed}")
    return saved.epochs_completed, saved.history


def _train_epoch(model: SpikingNetwork, optimizer, config: RunConfig, inputs: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, epoch: int, progress: bool) -> dict[str, Any]:
    """One pass over the training set in the epoch's own shuffled order and input spikes."""
    model.train()
    device = inputs.device
    n_train, batch_size = len(labels), config.training.batch_size
    order = torch.randperm(
        n_train, generator=torch.Generator().manual_seed(derive_seed(config.seed, epoch, _SHUFFLE_STREAM))
    ).to(device)
    encoder_rng = torch.Generator(device=device).manual_seed(derive_seed(config.seed, epoch, _ENCODE_STREAM))
    dropout_rng = torch.Generator(device=device).manual_seed(derive_seed(config.seed, epoch, _DROPOUT_STREAM))
    loss_sum, correct, rates = 0.0, 0, np.zeros(len(model.graph.populations))
    started = time.perf_counter()
    bar = tqdm(range(0, n_train, batch_size), desc=f"epoch {epoch + 1}/{config.training.epochs}", unit="batch",
               disable=not progress, leave=False)
    for start in bar:
        index = order[start : start + batch_size]
        batch_labels = labels[index]
        spikes = encode(config.encoding.kind, inputs[index], config.encoding.time_steps, encoder_rng)
        loss, out = _train_step(model, optimizer, config, spikes, batch_labels, num_classes, epoch, dropout_rng)
        with torch.no_grad():
            loss_sum += float(loss) * len(index)
            correct += int((out.predictions == batch_labels).sum())
            rates += np.array([float(s.sum()) / s[0].numel() for s in out.population_spikes.values()])
        bar.set_postfix(loss=f"{loss_sum / min(start + batch_size, n_train):.4f}")
    elapsed = time.perf_counter() - started
    return {"epoch": epoch + 1, "loss": loss_sum / n_train, "train_accuracy": correct / n_train,
            "train_firing_rates": (rates / n_train).tolist(), "train_samples_per_s": n_train / elapsed}


def train(
    config: RunConfig,
    resume: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    inspect: Callable[[Graph], None] | None = None,
) -> TrainResult:
    """Trains (or resumes) the run described by `config`; writes a checkpoint each epoch.
    inspect(graph), if given, sees the network's graph before the first epoch (the CLI
    warns there about networks Lava cannot run with their trained timing)."""
    device = select_device(config.training.device)
    dataset, input_shape = _training_data(config)
    torch.manual_seed(config.seed)
    model = _new_model(config, input_shape, device)
    if inspect is not None:
        inspect(model.graph)
    if model.num_outputs != dataset.num_classes:
        raise ConfigError(f"the network has {model.num_outputs} output neurons but dataset {dataset.name!r} "
                         f"has {dataset.num_classes} classes")
    eval_batch = _evaluation_batch(config, model)
    optimizer = _optimizer(model, config)
    start_epoch, history = 0, []
    if resume is not None:
        start_epoch, history = _resume(resume, config, model, optimizer, log)
    if config.training.method == "hm2bp":
        hm2bp.prepare(model)

    checkpoint_path = Path(config.output_dir) / CHECKPOINT_NAME
    train_inputs = torch.from_numpy(dataset.train.inputs).to(device)
    train_labels = torch.from_numpy(dataset.train.labels).to(device)
    versions = package_versions()
    for epoch in range(start_epoch, config.training.epochs):
        for group in optimizer.param_groups:  # from the epoch alone, so a resumed run continues the schedule
            group["lr"] = epoch_learning_rate(config, epoch)
        record = _train_epoch(model, optimizer, config, train_inputs, train_labels, dataset.num_classes, epoch,
                              progress)
        test = evaluate(model, config, dataset.test, device, eval_batch)
        record = {"epoch": record["epoch"], "loss": record["loss"], "train_accuracy": record["train_accuracy"],
                  "test_accuracy": test["accuracy"], "train_firing_rates": record["train_firing_rates"],
                  "test_firing_rates": test["firing_rates"], "train_samples_per_s": record["train_samples_per_s"]}
        history.append(record)
        save_checkpoint(
            checkpoint_path,
            Checkpoint(
                config=config, input_shape=input_shape, num_classes=dataset.num_classes,
                epochs_completed=epoch + 1,
                model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
                optimizer_state=optimizer.state_dict(), history=history, versions=versions,
            ),
        )
        rates_text = " ".join(f"{r:.3f}" for r in record["test_firing_rates"])
        log(
            f"epoch {epoch + 1:3d}/{config.training.epochs}  loss {record['loss']:.4f}  "
            f"train acc {100 * record['train_accuracy']:6.2f}%  "
            f"test acc {100 * record['test_accuracy']:6.2f}%  "
            f"firing rate/population [{rates_text}]  {record['train_samples_per_s']:.0f} samples/s"
        )
    return TrainResult(model.cpu().eval(), history, checkpoint_path, dataset)
