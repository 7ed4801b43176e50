"""Skip and recurrent connections from the run config through training, export, the
emulator and Lava; and the checkpoint written before the network graph."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from netgraph import Edge
from trainer.architecture import build_graph
from trainer.checkpoint import build_model, load_checkpoint
from trainer.config import ConfigError, config_from_dict, load_config
from trainer.network import SpikingNetwork


def model(layers, **extra):
    return {"seed": 0, "data": {"name": "digits"}, "model": {"layers": layers, **extra}}


RECURRENT = [{"name": "h", "type": "dense", "units": 1, "inputs": ["input", {"source": "h", "recurrent": True}]},
             {"type": "dense", "units": 10}]


# --------------------------------------------------------------------------- config -> graph


def test_shipped_residual_and_recurrent_configs_build_their_graphs():
    resnet = build_graph(load_config(REPO_ROOT / "configs" / "digits_resnet.yaml").model, (1, 8, 8))
    assert [e.source for e in resnet.inputs_of("block_conv2_sum")] == ["block_conv2_from_block_conv1",
                                                                      "block_conv2_from_stem"]
    assert resnet.node("block_conv2_from_stem").kernel_size == (1, 1)
    assert resnet.shape_of("pool") == (8, 4, 4) and resnet.shape_of("classifier") == (10,)
    recurrent = build_graph(load_config(REPO_ROOT / "configs" / "digits_recurrent.yaml").model, (1, 8, 8))
    assert Edge("hidden", "hidden_recurrent", recurrent=True) in recurrent.edges
    assert recurrent.node("hidden_recurrent").out_features == 128


@pytest.mark.parametrize("layers, message", [
    ([{"type": "dense", "units": 10, "inputs": ["nowhere"]}], "layers\\[0\\].inputs\\[0\\].source: no layer is named "
                                                              "'nowhere'"),
    ([{"type": "dense", "units": 4, "inputs": ["layer1"]}, {"type": "dense", "units": 10}],
     "layers\\[0\\].inputs\\[0\\].source: 'layer1' is not an earlier layer"),
    ([{"type": "conv", "channels": 2, "kernel_size": 3}, {"type": "avgpool", "kernel_size": 2},
      {"type": "dense", "units": 10, "inputs": ["input", {"source": "pool0", "recurrent": True}]}],
     "a recurrent input must read the spikes of a dense or conv layer, not 'pool0'"),
    ([{"type": "dense", "units": 10, "inputs": ["input", "input"]}], "'input' is read twice"),
    ([{"type": "dense", "units": 10, "inputs": [{"source": "layer0", "recurrent": True}]}],
     "needs at least one input that is not recurrent"),
    ([{"type": "dense", "units": 4}, {"type": "dense", "units": 10, "inputs": ["input"]}],
     "layer 'layer0' is read by no other layer and is not the output"),
    ([{"name": "a", "type": "dense", "units": 4, "inputs": ["input", {"source": "a", "recurrent": True}]},
      {"type": "dense", "units": 10, "inputs": ["input"]}], "layer 'a' is read by no other layer"),
    ([{"name": "d", "type": "dense", "units": 4},
      {"type": "conv", "channels": 2, "kernel_size": 3, "inputs": ["input", {"source": "d", "recurrent": True}]},
      {"type": "dense", "units": 10}], "inputs\\[1\\]: a conv layer cannot read the dense layer 'd'"),
    ([{"name": "b_sum", "type": "dense", "units": 4}, {"name": "b", "type": "dense", "units": 10,
                                                       "inputs": ["input", "b_sum"]}],
     "layers\\[0\\].name: b_sum is the name of the node that adds the inputs of layer 'b'"),
    ([{"name": "x" * 65, "type": "dense", "units": 10}], "must be a letter followed by letters, digits or '_' "
                                                         "\\(at most 64\\)"),
    ([{"name": "output", "type": "dense", "units": 10}], "'output' must be a letter"),
    ([{"name": "a", "type": "dense", "units": 4}, {"name": "a", "type": "dense", "units": 10}],
     "layers\\[1\\].name: 'a' is already the name of"),
    ([{"type": "dense", "units": 10, "inputs": [{"source": "input", "kernel_size": 1}]}],
     "kernel_size, stride and padding apply only to the inputs of a conv layer"),
])
def test_bad_wiring_is_refused_naming_the_key(layers, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_from_dict(model(layers), "net.yaml")
    assert "net.yaml" in str(info.value)


@pytest.mark.parametrize("layers, message", [
    ([{"name": "stem", "type": "conv", "channels": 2, "kernel_size": 3, "padding": 1},
      {"name": "inner", "type": "conv", "channels": 2, "kernel_size": 3},
      {"type": "dense", "units": 10, "inputs": ["inner"]}, ],
     None),
    ([{"name": "stem", "type": "conv", "channels": 2, "kernel_size": 3, "padding": 1},
      {"name": "inner", "type": "conv", "channels": 2, "kernel_size": 3},
      {"name": "block", "type": "conv", "channels": 2, "kernel_size": 3, "padding": 1,
       "inputs": ["inner", {"source": "stem", "kernel_size": 1, "padding": 0}]},
      {"type": "dense", "units": 10}],
     "net.yaml: model.layers\\[2\\].inputs\\[1\\] \\(stem\\): gives a current of shape \\(2, 8, 8\\), but layer "
     "block's neurons have shape \\(2, 6, 6\\); set this input's kernel_size, stride or padding so that it gives "
     "6x6 maps"),
    ([{"name": "r", "type": "conv", "channels": 2, "kernel_size": 3,
       "inputs": ["input", {"source": "r", "recurrent": True}]}, {"type": "dense", "units": 10}],
     "net.yaml: model.layers\\[0\\].inputs\\[1\\] \\(r\\): gives a current of shape \\(2, 4, 4\\), but layer r's neurons "
     "have shape \\(2, 6, 6\\)"),
    ([{"type": "conv", "channels": 2, "kernel_size": 3, "padding": 3}, {"type": "dense", "units": 10}],
     "net.yaml: model.layers\\[0\\].inputs\\[0\\]: edge input -> layer0_from_input: padding 3 must be smaller than "
     "the 3x3 kernel"),
])
def test_shapes_that_do_not_fit_name_the_file_and_the_input(layers, message):
    config = config_from_dict(model(layers), "net.yaml")
    if message is None:
        SpikingNetwork.from_config(config.model, (1, 8, 8), source=config.source)
        return
    with pytest.raises(ConfigError, match=message):
        SpikingNetwork.from_config(config.model, (1, 8, 8), source=config.source)


def test_names_and_inputs_are_filled_in_and_round_trip():
    config = config_from_dict(model([{"type": "dense", "units": 5}, {"type": "dense", "units": 10}]))
    assert [layer.name for layer in config.model.layers] == ["layer0", "layer1"]
    assert [[i.source for i in layer.inputs] for layer in config.model.layers] == [["input"], ["layer0"]]
    assert config_from_dict(config.to_dict()) == config


# --------------------------------------------------------------------------- the trainer


def test_recurrent_forward_by_hand():
    # h: input weight 1.0, recurrent weight w, tau 0.5, Vth 1.0, no bias; one input spike at
    # step 0. With w = 1.0: u = 1.0 (fires), then 0 + 1.0 from its own spike: fires every
    # step. With w = 0.9: u = 1.0 (fires), 0.9, 0.45, 0.225: silent after step 0.
    config = config_from_dict(model(RECURRENT, tau=0.5, v_threshold=1.0))
    network = SpikingNetwork.from_config(config.model, (1,))
    spikes = torch.tensor([[[1.0], [0.0], [0.0], [0.0]]])
    for w, expected in ((1.0, [1, 1, 1, 1]), (0.9, [1, 0, 0, 0])):
        with torch.no_grad():
            network.nodes["h_from_input"].weight.fill_(1.0)
            network.nodes["h_recurrent"].weight.fill_(w)
            network.nodes["h"].bias.zero_()
        assert network(spikes).population_spikes["h"][0, :, 0].tolist() == expected


def _reference_recurrent_loss(w_in, w_rec, b, w_out, b_out, spikes, tau, vth, surrogate):
    """The STBP equations written out once more, independently of trainer.network."""
    from trainer.surrogate import spike

    batch, steps = spikes.shape[:2]
    u = o = torch.zeros(batch, w_in.shape[0], dtype=spikes.dtype)
    u2 = o2 = torch.zeros(batch, w_out.shape[0], dtype=spikes.dtype)
    total = 0.0
    for t in range(steps):
        x = spikes[:, t].flatten(1) @ w_in.T + o @ w_rec.T
        u = tau * u * (1 - o) + x + b
        o = spike(u - vth, surrogate)
        u2 = tau * u2 * (1 - o2) + o @ w_out.T + b_out
        o2 = spike(u2 - vth, surrogate)
        total = total + o2.sum()
    return total


def test_recurrent_gradients_equal_an_independent_unrolled_implementation():
    layers = [{"name": "h", "type": "dense", "units": 6, "inputs": ["input", {"source": "h", "recurrent": True}]},
              {"name": "out", "type": "dense", "units": 3}]
    config = config_from_dict(model(layers, surrogate="h4", surrogate_width=0.5))
    torch.manual_seed(0)
    network = SpikingNetwork.from_config(config.model, (5,)).double()
    spikes = (torch.rand(4, 7, 5, generator=torch.Generator().manual_seed(1)) < 0.5).double()
    network(spikes).output_spikes.sum().backward()
    params = {name: p.detach().clone().requires_grad_(True) for name, p in network.named_parameters()}
    reference = _reference_recurrent_loss(
        params["nodes.h_from_input.weight"], params["nodes.h_recurrent.weight"], params["nodes.h.bias"],
        params["nodes.out_from_h.weight"], params["nodes.out.bias"], spikes, 0.2, 0.5, network.nodes["h"].surrogate)
    reference.backward()
    for name, p in network.named_parameters():
        torch.testing.assert_close(p.grad, params[name].grad, rtol=1e-10, atol=1e-12, msg=name)
    assert params["nodes.h_recurrent.weight"].grad.abs().sum() > 0


def test_residual_forward_adds_both_paths():
    layers = [{"name": "a", "type": "dense", "units": 4}, {"name": "b", "type": "dense", "units": 4},
              {"name": "c", "type": "dense", "units": 10, "inputs": ["b", "a"]}]
    network = SpikingNetwork.from_config(config_from_dict(model(layers)).model, (6,))
    spikes = (torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    out = network(spikes).population_spikes
    n = network.nodes
    current = out["b"] @ n["c_from_b"].weight.T + out["a"] @ n["c_from_a"].weight.T
    u, o, expected = torch.zeros(3, 10), torch.zeros(3, 10), []
    for t in range(5):
        u = 0.2 * u * (1 - o) + current[:, t] + n["c"].bias
        o = (u >= 0.5).float()
        expected.append(o)
    assert torch.equal(out["c"], torch.stack(expected, 1))


# --------------------------------------------------------------------------- through every stage


@pytest.mark.parametrize("seed, layers", [
    (1, [{"name": "stem", "type": "conv", "channels": 4, "kernel_size": 3, "padding": 1},
         {"name": "inner", "type": "conv", "channels": 4, "kernel_size": 3, "padding": 1},
         {"name": "block", "type": "conv", "channels": 4, "kernel_size": 3, "padding": 1,
          "inputs": ["inner", {"source": "stem", "kernel_size": 1, "padding": 0}]},
         {"name": "pool", "type": "avgpool", "kernel_size": 2}, {"name": "out", "type": "dense", "units": 10}]),
    (2, [{"name": "hidden", "type": "dense", "units": 24,
          "inputs": ["input", {"source": "hidden", "recurrent": True}]},
         {"name": "out", "type": "dense", "units": 10}]),
], ids=["residual", "recurrent"])
def test_trained_network_deploys_bit_exact_on_lava(seed, layers, tmp_path):
    pytest.importorskip("lava")
    from export.artifact import load_artifact, save_artifact
    from export.emulator import emulate
    from export.hw_config import resolve_hardware_config
    from lava_backend.runner import run_network
    from spikedata import load_dataset
    from stbp_cli.pipeline import export_checkpoint
    from trainer.encoding import encode_split
    from trainer.train import train

    config = config_from_dict({
        "seed": seed, "output_dir": str(tmp_path / "run"), "data": {"name": "digits", "train_limit": 300},
        "encoding": {"kind": "bernoulli", "time_steps": 6}, "model": {"layers": layers},
        "training": {"epochs": 2, "batch_size": 32, "learning_rate": 0.003, "device": "cpu"}})
    checkpoint_path = train(config, progress=False).checkpoint_path
    network, _ = export_checkpoint(checkpoint_path, resolve_hardware_config("loihi2"))
    save_artifact(network, tmp_path / "net.onnx")
    network = load_artifact(tmp_path / "net.onnx")
    test = load_dataset("digits").test.head(20)
    spikes = encode_split(network.encoding, test.inputs, network.time_steps, network.eval_seed)
    emulated = emulate(network, spikes)
    lava = run_network(network, spikes, mode="fixed_pt", progress=False, shards=1)
    for name, expected in emulated.population_spikes.items():
        np.testing.assert_array_equal(lava.population_spikes[name], expected, err_msg=name)
        assert expected.sum() > 0, name
    lava_float = run_network(network, spikes, mode="floating_pt", progress=False, shards=1)
    with torch.no_grad():
        trained = build_model(load_checkpoint(checkpoint_path))(torch.from_numpy(spikes).float())
    for name, expected in trained.population_spikes.items():
        assert (lava_float.population_spikes[name] == expected.numpy().astype(np.uint8)).mean() > 0.999, name


# --------------------------------------------------------------------------- format-1 checkpoints


def test_a_format_1_checkpoint_loads_and_reproduces_its_spikes():
    fixtures = REPO_ROOT / "tests" / "data"
    checkpoint = load_checkpoint(fixtures / "v1_checkpoint.safetensors")
    expected = np.load(fixtures / "v1_expected.npz")
    with torch.no_grad():
        out = build_model(checkpoint)(torch.from_numpy(expected["spikes"]).float())
    assert list(out.population_spikes) == ["layer0", "layer1"]
    for index, name in enumerate(out.population_spikes):
        np.testing.assert_array_equal(out.population_spikes[name].numpy().astype(np.uint8), expected[f"layer{index}"])
