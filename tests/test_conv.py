"""Convolution and average pooling through the pipeline: geometry against PyTorch, pool
folding (exact), config checks, and a trained CNN deployed bit-exactly on Lava."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from export.conv import conv_accumulate, conv_matrix, fold_avgpool_into_conv, fold_avgpool_into_dense
from netgraph.geometry import ConvGeometry
from trainer.config import ConfigError, config_from_dict


@pytest.mark.parametrize("in_shape, kernel, stride, padding", [
    ((1, 8, 8), 3, 1, 1), ((3, 9, 7), 2, 2, 0), ((2, 6, 6), 5, 1, 2), ((4, 10, 10), 4, 3, 1), ((1, 5, 5), 1, 1, 2),
    ((2, 4, 4), 3, 2, 4)])
def test_conv_accumulate_and_matrix_equal_torch_conv2d(in_shape, kernel, stride, padding):
    rng = np.random.default_rng(0)
    k = rng.integers(-5, 6, size=(3, in_shape[0], kernel, kernel)).astype(np.float64)
    x = rng.integers(0, 2, size=(4, *in_shape)).astype(np.float64)
    expected = F.conv2d(torch.from_numpy(x), torch.from_numpy(k), stride=stride, padding=padding).reshape(4, -1).numpy()
    geometry = ConvGeometry(in_shape, (kernel, kernel), stride, padding)
    np.testing.assert_array_equal(conv_accumulate(x.reshape(4, -1), k, geometry, max_elements=50), expected)
    np.testing.assert_array_equal(x.reshape(4, -1) @ conv_matrix(k, geometry).T, expected)
    assert geometry.out_shape(3) == tuple(expected.reshape(4, 3, -1).shape[1:2]) + tuple(
        F.conv2d(torch.from_numpy(x), torch.from_numpy(k), stride=stride, padding=padding).shape[2:])


@pytest.mark.parametrize("stride, padding, pool", [(1, 0, 2), (1, 1, 2), (2, 1, 3)])
def test_average_pool_folds_exactly_into_the_next_conv(stride, padding, pool):
    rng = np.random.default_rng(1)
    spikes = torch.from_numpy(rng.integers(0, 2, size=(5, 3, 6 * pool, 6 * pool)).astype(np.float64))
    kernel = rng.normal(size=(4, 3, 3, 3))
    reference = F.conv2d(F.avg_pool2d(spikes, pool), torch.from_numpy(kernel), stride=stride, padding=padding)
    folded, stride2, padding2 = fold_avgpool_into_conv(kernel, stride, padding, pool)
    assert folded.shape == (4, 3, 3 * pool, 3 * pool) and stride2 == stride * pool
    direct = F.conv2d(spikes, torch.from_numpy(folded), stride=stride2, padding=padding2)
    torch.testing.assert_close(direct, reference, rtol=0, atol=1e-12)


def test_average_pool_folds_exactly_into_the_next_dense():
    rng = np.random.default_rng(2)
    spikes = torch.from_numpy(rng.integers(0, 2, size=(5, 2, 8, 6)).astype(np.float64))
    weight = rng.normal(size=(7, 2 * 4 * 3))
    reference = F.avg_pool2d(spikes, 2).flatten(1) @ torch.from_numpy(weight).T
    folded = fold_avgpool_into_dense(weight, (2, 4, 3), 2)
    torch.testing.assert_close(spikes.flatten(1) @ torch.from_numpy(folded).T, reference, rtol=0, atol=1e-12)


def _model(layers):
    return {"seed": 0, "data": {"name": "digits"}, "model": {"layers": layers}}


@pytest.mark.parametrize("layers, message", [
    ([{"type": "dense", "units": 5}, {"type": "avgpool", "kernel_size": 2}, {"type": "dense", "units": 10}],
     "layers\\[1\\].inputs\\[0\\]: avgpool must read a conv layer or the input"),
    ([{"type": "conv", "channels": 4, "kernel_size": 3}, {"type": "avgpool", "kernel_size": 2}],
     "layers\\[1\\]: the last layer is the output and must be dense or conv"),
    ([{"type": "dense", "units": 5}, {"type": "conv", "channels": 4, "kernel_size": 3}, {"type": "dense", "units": 10}],
     "a conv layer cannot read the dense layer 'layer0'"),
    ([{"type": "conv", "channels": 4, "kernel_size": 3, "units": 3}, {"type": "dense", "units": 10}], "do not apply"),
    ([{"type": "conv", "kernel_size": 3}, {"type": "dense", "units": 10}], "channels: required"),
])
def test_bad_layer_lists_are_refused_naming_the_layer(layers, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_model(layers), "cnn.yaml")


def test_pool_that_does_not_divide_the_map_is_refused():
    from trainer.network import SpikingNetwork

    config = config_from_dict(_model([{"type": "conv", "channels": 2, "kernel_size": 3},
                                      {"type": "avgpool", "kernel_size": 4}, {"type": "dense", "units": 10}]))
    with pytest.raises(ConfigError, match="model.layers\\[1\\] \\(pool0\\): edge layer0 -> pool0: pool size 4 must "
                                          "divide the 6x6 map"):
        SpikingNetwork.from_config(config.model, (1, 8, 8))


def test_trained_cnn_exports_and_runs_bit_exact_on_lava(tmp_path):
    pytest.importorskip("lava")
    from export.artifact import load_artifact, save_artifact
    from export.emulator import emulate
    from export.hw_config import resolve_hardware_config
    from lava_backend.runner import run_network
    from spikedata import load_dataset
    from stbp_cli.pipeline import export_checkpoint
    from trainer.checkpoint import build_model, load_checkpoint
    from trainer.encoding import encode_split
    from trainer.train import train

    config = config_from_dict({
        "seed": 1, "output_dir": str(tmp_path / "cnn"),
        "data": {"name": "digits", "train_limit": 400},
        "encoding": {"kind": "bernoulli", "time_steps": 6},
        "model": {"layers": [{"type": "conv", "channels": 4, "kernel_size": 3, "padding": 1},
                             {"type": "avgpool", "kernel_size": 2},
                             {"type": "conv", "channels": 6, "kernel_size": 3, "stride": 1},
                             {"type": "dense", "units": 10}]},
        "training": {"epochs": 2, "batch_size": 32, "learning_rate": 0.003, "device": "cpu"},
    })
    checkpoint_path = train(config, progress=False).checkpoint_path
    network, report = export_checkpoint(checkpoint_path, resolve_hardware_config("loihi2"))
    assert [n.kind for n in network.graph.nodes if n.kind in ("Conv2d", "Dense", "AvgPool2d")] == \
        ["Conv2d", "Conv2d", "Dense"]  # the pool is folded away
    folded = network.graph.node("layer1_from_pool0")
    assert folded.quantized.weight.shape == (6, 4, 6, 6) and folded.stride == 2  # pool folded in
    assert [e.source for e in network.graph.inputs_of("layer1_from_pool0")] == ["layer0"]
    save_artifact(network, tmp_path / "cnn.onnx")
    network = load_artifact(tmp_path / "cnn.onnx")
    assert network.graph.shape_of("layer0") == (4, 8, 8)
    test = load_dataset("digits").test.head(25)
    spikes = encode_split(network.encoding, test.inputs, network.time_steps, network.eval_seed)
    emulated = emulate(network, spikes)
    torch_emulated = emulate(network, spikes, backend="torch")
    lava = run_network(network, spikes, mode="fixed_pt", progress=False)
    for name, expected in emulated.population_spikes.items():
        np.testing.assert_array_equal(lava.population_spikes[name], expected, err_msg=name)
        np.testing.assert_array_equal(torch_emulated.population_spikes[name], expected)
    assert emulated.population_spikes["layer0"].sum() > 0 and emulated.population_spikes["layer1"].sum() > 0
    # Lava's float models run the folded float network: they must reproduce the trained CNN,
    # pooling included.
    lava_float = run_network(network, spikes, mode="floating_pt", progress=False)
    with torch.no_grad():
        trained = build_model(load_checkpoint(checkpoint_path))(torch.from_numpy(spikes).float())
    for name, expected in trained.population_spikes.items():
        assert (lava_float.population_spikes[name] == expected.numpy().astype(np.uint8)).mean() > 0.999
