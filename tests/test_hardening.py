"""Hardening of the deployment side (issue 14): every bad artifact ends in one line naming the
file and the key or node, declared sizes are bounded before anything is allocated, metadata
keeps its types, files are written as units, and the emulator and Lava agree up to the input
bound validation enforces, which Lava itself shows is needed."""
from __future__ import annotations

import contextlib
import json
import os
import stat

import numpy as np
import onnx
import pytest

from export.artifact import load_artifact, save_artifact, to_onnx
from export.emulator import emulate, emulation_bytes_per_sample
from export.validate import ExportRangeError, validate_network
from conftest import REPO_ROOT
from helpers import chain_structure, integer_network
from lava_backend import runner
from lava_backend.runner import run_network
from netgraph import Conv2d, Edge, Graph, Input, LIF, Output
from netgraph.errors import ArtifactError, GraphError, ResourceLimitError, StbpError
from netgraph.limits import MEMORY_LIMIT_VARIABLE
from netgraph.provenance import atomic_files, atomic_write
from stbp_cli.main import main


def _chain(time_steps=4):
    return integer_network(chain_structure([6, 5, 3]), time_steps, np.random.default_rng(1))


def _saved(tmp_path, network, name="net.onnx"):
    path = tmp_path / name
    save_artifact(network, path)
    return path


def _rewrite(path, mutate):
    model = onnx.load(str(path))
    mutate(model)
    path.write_bytes(model.SerializeToString())
    return path


def _set_meta(key, value):
    def mutate(model):
        prop = next((p for p in model.metadata_props if p.key == key), None) or model.metadata_props.add()
        prop.key, prop.value = key, value
    return mutate


def _hw_field(field, value):
    def mutate(model):
        prop = next(p for p in model.metadata_props if p.key == "hw_config")
        raw = json.loads(prop.value)
        raw[field] = value
        prop.value = json.dumps(raw)
    return mutate


def _one_line_error(path, match):
    with pytest.raises(StbpError, match=match) as info:
        load_artifact(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


# --------------------------------------------------------------------------- metadata


def test_metadata_keeps_its_types_and_float_parameters_keep_float64(tmp_path):
    network = _chain()
    lif = network.graph.node("l0")
    precise = type(lif)(**{**{f: getattr(lif, f) for f in ("name", "shape", "bias", "quantized", "tau_current")},
                           "tau": 0.1 + 1e-12, "v_threshold": 1 / 3})
    values = {"a_number_as_text": "123", "true_as_text": "true", "null_as_text": "null", "a_number": 123,
              "nested": {"x": [1, "2", None, 2.5]}, "empty": ""}
    network = type(network)(network.graph.replace(nodes=[precise]), network.encoding, network.time_steps,
                            network.eval_seed, network.hardware, values)
    loaded = load_artifact(_saved(tmp_path, network))
    assert loaded.metadata == values
    assert {k: type(v) for k, v in loaded.metadata.items()} == {k: type(v) for k, v in values.items()}
    assert loaded.graph.node("l0").tau == 0.1 + 1e-12 and loaded.graph.node("l0").v_threshold == 1 / 3


def test_reserved_metadata_keys_cannot_be_overwritten_by_provenance(tmp_path):
    network = _chain()
    network = type(network)(network.graph, network.encoding, 4, 0, network.hardware, {"time_steps": 9})
    with pytest.raises(ArtifactError, match="time_steps are reserved"):
        to_onnx(network)


@pytest.mark.parametrize("key, value, match", [
    ("time_steps", str(10 ** 12), "'time_steps' = 1000000000000 is outside \\[1, 1000000\\]"),
    ("time_steps", "1_000", "'time_steps' must be an integer, got '1_000'"),
    ("time_steps", "0", "'time_steps' = 0 is outside"),
    ("time_steps", "1e3", "'time_steps' must be an integer"),
    ("eval_seed", str(1 << 64), "'eval_seed' = 18446744073709551616 is outside"),
    ("encoding", "rot13", "'encoding' must be one of bernoulli, events, got 'rot13'"),
    ("output_readout", "votes", "'output_readout' must be one of"),
    ("metadata_format", "pickle", "'metadata_format' must be 'json'"),
    ("training_seed", "not json", "'training_seed' is not JSON"),
    ("training_seed", "[" * 5000 + "]" * 5000, "'training_seed' is not JSON"),
    ("hw_config", "{", "'hw_config' is not JSON"),
    ("training_config", '{"seed": 1, "seed": 2}', "'training_config' is not JSON .*'seed' given twice"),
])
def test_bad_metadata_values_are_refused_naming_the_key(tmp_path, key, value, match):
    _one_line_error(_rewrite(_saved(tmp_path, _chain()), _set_meta(key, value)), match)


@pytest.mark.parametrize("field, value, match", [
    ("bias_mant_bits", 2 ** 70, "'bias_mant_bits' = 1180591620717411303424 is outside \\[1, 32\\]"),
    ("activation_shift", -3, "'activation_shift' = -3 is outside \\[0, 8\\]"),
    ("state_bits", 1, "'state_bits' = 1 is outside"),
    ("state_bits", 1000, "'state_bits' = 1000 is outside"),
    ("vth_shift", 100, "'vth_shift' = 100 is outside"),
    ("weight_bits", "8", "'weight_bits' must be an integer"),
])
def test_embedded_hardware_configs_out_of_range_are_refused(tmp_path, field, value, match):
    _one_line_error(_rewrite(_saved(tmp_path, _chain()), _hw_field(field, value)), match)


def test_invalid_utf8_and_duplicate_keys_are_refused_naming_the_key(tmp_path):
    path = _saved(tmp_path, _chain())
    data = path.read_bytes()
    at = data.index(b"bernoulli")
    path.write_bytes(data[:at] + b"\xff\xfe" + data[at + 2:])
    _one_line_error(path, "metadata 'encoding' is not UTF-8 text")
    path = _rewrite(_saved(tmp_path, _chain(), "dup.onnx"), lambda m: m.metadata_props.add().CopyFrom(
        next(p for p in m.metadata_props if p.key == "encoding")))
    _one_line_error(path, "metadata key 'encoding' appears twice")


def test_old_artifacts_without_the_metadata_format_still_read_strings_as_written(tmp_path):
    def legacy(model):
        keep = [p for p in model.metadata_props if p.key != "metadata_format"]
        del model.metadata_props[:]
        model.metadata_props.extend(keep)
        model.metadata_props.add(key="note", value="plain text")
    loaded = load_artifact(_rewrite(_saved(tmp_path, _chain()), legacy))
    assert loaded.metadata["note"] == "plain text"


def test_an_artifact_written_before_this_schema_revision_loads_and_runs_unchanged(tmp_path):
    legacy = REPO_ROOT / "tests" / "data" / "v2_artifact_fd61cd7.onnx"
    model = onnx.load(str(legacy))
    assert "metadata_format" not in {p.key for p in model.metadata_props}
    assert {a.type for n in model.graph.node for a in n.attribute if a.name == "tau"} == {onnx.AttributeProto.FLOAT}
    old = load_artifact(legacy)
    assert old.metadata["source_checkpoint"].endswith(".safetensors") and isinstance(old.metadata["training_seed"], int)
    rewritten = load_artifact(_saved(tmp_path, old))  # float64 attributes, JSON provenance
    assert rewritten.metadata == old.metadata
    for node in old.graph.populations:
        assert (rewritten.graph.node(node.name).tau, rewritten.graph.node(node.name).v_threshold) == \
            (node.tau, node.v_threshold)
    spikes = np.random.default_rng(0).integers(0, 2, (6, old.time_steps, *old.input_shape)).astype(np.uint8)
    np.testing.assert_array_equal(emulate(old, spikes).output_spikes, emulate(rewritten, spikes).output_spikes)


def test_uint64_weights_near_2_to_the_64_are_refused_not_wrapped(tmp_path):
    def unsigned(model):
        tensor = next(t for t in model.graph.initializer if t.name == "d0.weight")
        values = onnx.numpy_helper.to_array(tensor).astype(np.uint64) + np.uint64((1 << 64) - 256)
        tensor.CopyFrom(onnx.numpy_helper.from_array(values, "d0.weight"))
    _one_line_error(_rewrite(_saved(tmp_path, _chain()), unsigned), "node d0 .*tensor 'd0.weight' has dtype uint64, expected int64")


# --------------------------------------------------------------------------- declared sizes


def test_declared_sizes_are_bounded_before_anything_is_allocated(tmp_path):
    def huge_lif(model):
        node = next(n for n in model.graph.node if n.name == "l0")
        next(a for a in node.attribute if a.name == "shape").ints[:] = [1 << 40]
    _one_line_error(_rewrite(_saved(tmp_path, _chain()), huge_lif), "node l0 .*'shape' = .* must lie in")


def test_a_conv_padding_bomb_is_refused_and_a_huge_emulation_names_the_node_and_estimate(monkeypatch):
    with pytest.raises(GraphError, match="edge input -> c: padding 1000 must be smaller than the 3x3 kernel"):
        Graph((Input("input", (1, 8, 8)), Conv2d("c", 4, (3, 3), padding=1000), LIF("l", (4, 2006, 2006)),
               Output("output")), (Edge("input", "c"), Edge("c", "l"), Edge("l", "output")))
    nodes = (Input("input", (1, 2048, 2048)), Conv2d("c", 4, (3, 3), padding=2), LIF("l", (4, 2050, 2050)),
             Output("output"))
    structure = Graph(nodes, (Edge("input", "c"), Edge("c", "l"), Edge("l", "output")))
    network = integer_network(structure, 25, np.random.default_rng(0), bias={"l": np.zeros(4 * 2050 * 2050)})
    sizes = emulation_bytes_per_sample(network.graph, 25)
    assert sizes["c"] == 25 * 4 * 2050 * 2050 * 24  # int64 sums and the float product, per step
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, str(1 << 30))
    with pytest.raises(ResourceLimitError, match="emulating one sample \\(T = 25; node c alone 9.4 GiB\\) would "
                                                 "take 1[0-9].[0-9] GiB, more than the limit of 1.0 GiB"):
        validate_network(network)


def test_the_emulator_batches_within_the_memory_limit(monkeypatch):
    network = _chain(time_steps=3)
    spikes = np.random.default_rng(0).integers(0, 2, (9, 3, 6)).astype(np.uint8)
    whole = emulate(network, spikes)
    per_sample = sum(emulation_bytes_per_sample(network.graph, 3).values())
    monkeypatch.setenv(MEMORY_LIMIT_VARIABLE, str(2 * per_sample))  # two samples per batch
    batched = emulate(network, spikes)
    for name, recorded in whole.population_spikes.items():
        np.testing.assert_array_equal(batched.population_spikes[name], recorded)


# --------------------------------------------------------------------------- int32: emulator vs Lava


def _loud_chain(fan_in, weight, weight_exp, time_steps, du=4095):
    structure = chain_structure([fan_in, 1])
    return integer_network(structure, time_steps, weights={"d0": np.full((1, fan_in), weight)},
                           weight_exp=weight_exp, du=du, dv=0, vth=1, bias={"l0": np.zeros(1)})


def test_the_reported_int32_case_is_refused_naming_the_population():
    # fan-in 1,600 of weights 254 with weight_exp 7: (1600 * 254 << 7) << 6 >= 2^31
    with pytest.raises(ExportRangeError, match="node l0 \\(LIF\\): one step of its synaptic input can reach "
                                               "52019200 .*past the 16777216"):
        validate_network(_loud_chain(1600, 254, 7, 4))


def test_lava_and_the_emulator_agree_at_the_input_bound_and_part_past_it(monkeypatch):
    """At the bound (one step's input << 6 = 2^24, u not decaying, every input spiking
    every step) Lava fixed_pt and the emulator agree spike for spike; at twice the bound the
    current leaves its 24 bits and Lava's int32 arithmetic overflows: they part, which is why
    validation refuses it."""
    steps = 140
    at_bound = _loud_chain(2048, 128, 0, steps, du=0)  # 2048 * 128 << 6 = 2^24 exactly
    validate_network(at_bound)
    spikes = np.ones((1, steps, 2048), np.uint8)
    lava = run_network(at_bound, spikes, record="all", progress=False)
    np.testing.assert_array_equal(lava.output_spikes, emulate(at_bound, spikes).output_spikes)
    past = _loud_chain(2048, 128, 1, steps, du=0)
    with pytest.raises(ExportRangeError):
        validate_network(past)
    monkeypatch.setattr(runner, "validate_network", lambda network: None)
    lava = run_network(past, spikes, record="all", progress=False)
    assert not np.array_equal(lava.output_spikes, emulate(past, spikes).output_spikes)
    assert lava.output_spikes[0, :, 0].min() == 0  # Lava's current overflowed int32 and went negative


# --------------------------------------------------------------------------- files


def test_atomic_writes_clean_stale_temporaries_and_honour_the_umask(tmp_path):
    stale = tmp_path / ".net.onnx.999999999.abcd_123.tmp"  # left by a process that no longer runs
    stale_backup = tmp_path / ".net.onnx.999999999.abcd_123.bak"
    live = tmp_path / f".net.onnx.{os.getpid()}.abcd_123.tmp"  # a write in progress in this process
    sibling = tmp_path / ".net.onnx.999999999.999999999.abcd_123.tmp"  # of a file named net.onnx.999999999
    for leftover in (stale, stale_backup, live, sibling):
        leftover.write_bytes(b"x")
    previous = os.umask(0o027)
    try:
        with atomic_write(tmp_path / "net.onnx") as handle:
            handle.write(b"data")
    finally:
        os.umask(previous)
    assert not stale.exists() and not stale_backup.exists() and live.exists() and sibling.exists()
    assert stat.S_IMODE(os.stat(tmp_path / "net.onnx").st_mode) == 0o640


def test_several_files_are_written_as_one_unit(tmp_path):
    (tmp_path / "a").write_bytes(b"old a")
    with pytest.raises(OSError):
        with atomic_files([tmp_path / "a", tmp_path / "b"]) as (a, b):
            a.write(b"new a")
            raise OSError(28, "No space left on device", str(tmp_path / "b"))
    assert (tmp_path / "a").read_bytes() == b"old a" and not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


class _FullDisk:
    """A file handle whose writes fail as on a full disk."""

    def __init__(self, handle):
        self.handle = handle

    def write(self, data):
        raise OSError(28, "No space left on device")

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_failed_rename_puts_the_files_already_replaced_back(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"old a")
    (tmp_path / "b").write_bytes(b"old b")
    real_replace = os.replace

    def second_fails(source, target):
        if str(target).endswith("/b"):
            raise PermissionError(13, "Permission denied")
        real_replace(source, target)
    monkeypatch.setattr(os, "replace", second_fails)
    with pytest.raises(PermissionError) as info:
        with atomic_files([tmp_path / "a", tmp_path / "b", tmp_path / "c"]) as handles:
            for handle in handles:
                handle.write(b"new")
    assert info.value.filename == str(tmp_path / "b")  # the target, not the temporary
    monkeypatch.undo()
    assert (tmp_path / "a").read_bytes() == b"old a" and (tmp_path / "b").read_bytes() == b"old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        with atomic_files([tmp_path / "a", tmp_path / "d"]) as handles:
            for handle in handles:
                handle.write(b"new")
    assert (tmp_path / "a").read_bytes() == b"old a"


def test_export_into_a_full_disk_leaves_neither_artifact_nor_report(trained_digits, tmp_path, monkeypatch, capsys):
    checkpoint, _ = trained_digits
    real = main.__globals__["atomic_files"]

    @contextlib.contextmanager
    def report_fails(paths, mode="wb"):
        with real(paths, mode) as handles:
            yield [handles[0], _FullDisk(handles[1]), *handles[2:]]  # the artifact is written, the report is not
    monkeypatch.setitem(main.__globals__, "atomic_files", report_fails)
    out = tmp_path / "net.onnx"
    assert main(["export", str(checkpoint), "-o", str(out), "--measure", "0"]) == 2
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.strip().endswith("stbp export: error: No space left on device")


def test_cli_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    path = _rewrite(_saved(tmp_path, _chain()), _set_meta("encoding", "rot13"))
    assert main(["run", str(path), "--backend", "emulator", "--data", "digits"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "'encoding' must be one of" in err
    assert main(["run", str(tmp_path / "missing.onnx"), "--data", "digits"]) == 2
    assert capsys.readouterr().err.strip().endswith(f"artifact not found: {tmp_path / 'missing.onnx'}")
    unreadable = tmp_path / "locked" / "net.onnx"
    unreadable.parent.mkdir()
    monkeypatch.setattr("stbp_cli.main.load_artifact", lambda p: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied", str(unreadable))))
    assert main(["run", str(unreadable), "--data", "digits"]) == 2
    assert capsys.readouterr().err.strip() == f"stbp run: error: {unreadable}: Permission denied"
    monkeypatch.setattr("stbp_cli.main.load_artifact", lambda p: (_ for _ in ()).throw(MemoryError()))
    assert main(["run", str(path), "--data", "digits"]) == 2
    assert capsys.readouterr().err.strip() == ("stbp run: error: out of memory (try --limit, fewer --shards, or a "
                                               "smaller batch)")
    monkeypatch.setattr("stbp_cli.main.load_artifact", lambda p: {}["a bug"])
    with pytest.raises(KeyError):
        main(["run", str(path), "--data", "digits"])
    monkeypatch.setattr("stbp_cli.main.load_artifact", lambda p: (_ for _ in ()).throw(ValueError("a bug")))
    with pytest.raises(ValueError, match="a bug"):
        main(["run", str(path), "--data", "digits"])


# --------------------------------------------------------------------------- other readers


@pytest.mark.parametrize("recorded, message", [("[not json", "recurrent_synapses is not JSON"),
                                               ('{"rec": 1}', "must be a JSON list of node names")])
def test_a_nir_file_with_bad_recurrent_metadata_is_one_line(tmp_path, capsys, recorded, message):
    import nir

    n = 3
    graph = nir.NIRGraph(nodes={"in": nir.Input(input_type=np.array([2])),
                                "fc": nir.Affine(weight=np.ones((n, 2)), bias=np.zeros(n)),
                                "lif": nir.LIF(tau=np.full(n, 1e-3), r=np.ones(n), v_leak=np.zeros(n),
                                               v_threshold=np.ones(n)),
                                "out": nir.Output(output_type=np.array([n]))},
                         edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")], type_check=False,
                         metadata={"recurrent_synapses": recorded})
    path = tmp_path / "net.nir"
    nir.write(str(path), graph)
    code = main(["import", str(path), "-o", str(tmp_path / "out"), "--data", "digits", "--time-steps", "4",
                 "--dt", "1e-4"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_a_corrupt_nmnist_recording_is_one_line_naming_the_file(tmp_path):
    from spikedata import DataError, load_dataset, write_nmnist_file

    for digit in range(2):
        folder = tmp_path / "Train" / str(digit)
        folder.mkdir(parents=True)
        for k in range(3):
            write_nmnist_file(folder / f"{k:05d}.bin", [1, 2], [3, 4], [0, 1], [10, 20 + k])
    bad = tmp_path / "Train" / "1" / "00002.bin"
    write_nmnist_file(bad, [200], [3], [0], [10])  # x = 200 on a 34-pixel-wide sensor
    with pytest.raises(DataError, match=f"{bad}: events outside the 34x34 sensor"):
        load_dataset("nmnist", str(tmp_path), 4)


def test_the_exporter_lowers_the_scale_of_a_very_wide_fan_in_to_the_input_bound():
    from export.quantize import quantize_graph
    from helpers import HW, float_chain

    rng = np.random.default_rng(0)
    graph = float_chain([(np.abs(rng.normal(0, 0.1, (4, 16000))), np.zeros(4)),
                         (rng.normal(0, 0.3, (3, 4)), np.zeros(3))], (16000,))
    network, report = quantize_graph(graph, "bernoulli", 8, 0, HW)
    validate_network(network)  # one step's input within 2^24 >> 6: no refusal
    synapse = network.graph.node("layer0_from_input").quantized
    assert int(np.abs(synapse.weight).sum(axis=1).max()) <= (1 << 18)
    assert "weight scale lowered" in report.format_table()
