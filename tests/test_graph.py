"""The network graph: validation naming the node or edge, shapes, execution plan, and the
Lava pipeline timing derived from it."""
from __future__ import annotations

import numpy as np
import pytest

from export.timing import TimingError, deployment_timing
from helpers import chain_structure, recurrent_structure, skip_structure
from netgraph import LIF, AvgPool2d, Conv2d, Dense, Edge, Graph, GraphError, Input, Output, Stage, Sum


def graph(nodes, edges):
    return Graph(tuple(nodes), tuple(Edge(*e) if isinstance(e, tuple) else e for e in edges))


BASE = [Input("input", (4,)), Dense("d", 3), LIF("p", (3,)), Output("output")]
BASE_EDGES = [("input", "d"), ("d", "p"), ("p", "output")]


def test_shapes_follow_every_node_type():
    g = graph([Input("input", (2, 8, 8)), Conv2d("c", 4, (3, 3), stride=1, padding=1), LIF("a", (4, 8, 8)),
               AvgPool2d("pool", 2), Dense("d", 10), LIF("out", (10,)), Output("output")],
              [("input", "c"), ("c", "a"), ("a", "pool"), ("pool", "d"), ("d", "out"), ("out", "output")])
    assert [g.shape_of(n) for n in g.order] == [(2, 8, 8), (4, 8, 8), (4, 8, 8), (4, 4, 4), (10,), (10,), (10,)]
    assert [p.name for p in g.populations] == ["a", "out"] and g.output_population.name == "out"


def test_order_and_plan_step_only_the_cycle_through_time():
    g = recurrent_structure()
    assert g.order.index("h_sum") < g.order.index("h") < g.order.index("out_in")
    assert g.plan() == (Stage(("input",), False), Stage(("h_in",), False), Stage(("h_rec", "h_sum", "h"), True),
                        Stage(("out_in",), False), Stage(("out",), False), Stage(("output",), False))
    assert not any(stage.recurrent for stage in skip_structure().plan())
    assert [s.name for s, _ in skip_structure().synapses_into("c")] == ["c_main", "c_skip"]


@pytest.mark.parametrize("nodes, edges, message", [
    (BASE + [LIF("p", (3,))], BASE_EDGES, "two nodes are named 'p'"),
    (BASE, BASE_EDGES + [("p", "ghost")], "edge p -> ghost: no node named 'ghost'"),
    (BASE, BASE_EDGES + [("d", "p")], "edge d -> p is given twice"),
    (BASE[:3], BASE_EDGES[:2], "exactly one Output node, found 0"),
    (BASE + [Input("second", (4,))], BASE_EDGES, "exactly one Input node, found 2 \\(input, second\\)"),
    (BASE + [Dense("d2", 3)], BASE_EDGES + [("input", "d2"), ("d2", "p")], "node p \\(LIF\\) takes exactly 1 input"),
    (BASE + [Dense("d2", 3)], BASE_EDGES + [("d", "d2")], "edge d -> d2: d2 \\(Dense\\) reads spikes or pooled, d "
                                                          "\\(Dense\\) emits current"),
    ([Input("input", (3,)), LIF("p", (3,)), Output("output")], [("input", "p"), ("p", "output")],
     "edge input -> p: p \\(LIF\\) reads current, input \\(Input\\) emits spikes"),
    ([Input("input", (3,)), Output("output")], [("input", "output")], "the output must read a LIF population"),
    (BASE + [Sum("s"), Dense("e", 3)], [("input", "d"), ("d", "p"), ("p", "output"), ("input", "e"), ("e", "s")],
     "node s \\(Sum\\) takes at least 2 input"),
    ([Input("input", (3,)), Dense("a", 3), Sum("s"), LIF("p", (3,)), Dense("b", 3), Output("output")],
     [("input", "a"), ("a", "s"), ("b", "s"), ("s", "p"), ("p", "b"), ("p", "output")],
     "cycle (s -> p -> b -> s|p -> b -> s -> p|b -> s -> p -> b) has no recurrent edge"),
    (BASE, BASE_EDGES[:1] + [Edge("d", "p", recurrent=True), BASE_EDGES[2]],
     "edge d -> p \\(recurrent\\): a recurrent edge must run from a LIF population to a synapse"),
    (BASE + [Dense("e", 2), LIF("q", (2,))], BASE_EDGES + [("p", "e"), ("e", "q")],
     "node e \\(Dense\\) is not on a path from the input 'input' to the output 'output'"),
    (BASE + [Dense("e", 2)], BASE_EDGES + [("p", "e")],
     "node e \\(Dense\\) emits a current, which must feed exactly one node; it feeds 0"),
])
def test_malformed_graphs_are_refused_naming_the_node_or_edge(nodes, edges, message):
    with pytest.raises(GraphError, match=message):
        graph(nodes, edges)


@pytest.mark.parametrize("nodes, edges, message", [
    ([Input("input", (3,)), Dense("a", 3), Dense("b", 4), Sum("s"), LIF("p", (3,)), Output("output")],
     [("input", "a"), ("input", "b"), ("a", "s"), ("b", "s"), ("s", "p"), ("p", "output")],
     "edges a -> s and b -> s: a sum needs inputs of one shape, a gives \\(3,\\) and b gives \\(4,\\)"),
    ([Input("input", (3,)), Dense("a", 3), LIF("p", (4,)), Output("output")],
     [("input", "a"), ("a", "p"), ("p", "output")],
     "edge a -> p: a gives a current of shape \\(3,\\), the population has shape \\(4,\\)"),
    ([Input("input", (9,)), Conv2d("c", 2, (3, 3)), LIF("p", (2, 1, 1)), Output("output")],
     [("input", "c"), ("c", "p"), ("p", "output")],
     "edge input -> c: a conv needs a \\(channels, height, width\\) input, input gives \\(9,\\)"),
    ([Input("input", (1, 6, 6)), AvgPool2d("pool", 4), Dense("d", 2), LIF("p", (2,)), Output("output")],
     [("input", "pool"), ("pool", "d"), ("d", "p"), ("p", "output")],
     "edge input -> pool: pool size 4 must divide the 6x6 map"),
    ([Input("input", (1, 4, 4)), Conv2d("c", 2, (5, 5)), LIF("p", (2, 1, 1)), Output("output")],
     [("input", "c"), ("c", "p"), ("p", "output")],
     "edge input -> c: kernel 5x5 is larger than the padded 4x4 input"),
    ([Input("input", (4,)), Dense("d", 3, weight=np.zeros((3, 5))), LIF("p", (3,)), Output("output")],
     BASE_EDGES, "edge input -> d: input gives 4 values \\(4,\\), but d's weight has shape \\(3, 5\\)"),
])
def test_shapes_must_agree_across_every_edge(nodes, edges, message):
    with pytest.raises(GraphError, match=message):
        graph(nodes, edges)


@pytest.mark.parametrize("make, message", [
    (lambda: Dense("layer.0", 3), "node name 'layer.0' must be"),
    (lambda: LIF("p", (3,), tau=1.5), "node p: tau must lie in \\[0, 1\\], got 1.5"),
    (lambda: LIF("p", (3,), v_threshold=0.0), "node p: v_threshold must be a positive number"),
    (lambda: LIF("p", (3,), bias=np.zeros(4)), "node p: bias has shape \\(4,\\), expected \\(3,\\)"),
    (lambda: Conv2d("c", 2, (3, 3), padding=-1), "node c: padding must be an integer >= 0"),
    (lambda: Dense("d", 0), "node d: out_features must be a positive integer"),
])
def test_node_parameters_are_checked_when_built(make, message):
    with pytest.raises(GraphError, match=message):
        make()


# --------------------------------------------------------------------------- Lava timing


def test_chain_runs_one_lava_step_per_synapse():
    timing = deployment_timing(chain_structure((4, 3, 3, 2)), 63)
    assert timing.emit == {"input": 1, "l0": 2, "l1": 3, "l2": 4}
    assert timing.delay == {"d0": 0, "d1": 0, "d2": 0}


def test_skip_path_is_delayed_to_the_longest_path():
    timing = deployment_timing(skip_structure(), 63)
    # a runs at step 2 and b at 3; c reads b (arrives at 4) and a (would arrive at 3).
    assert timing.emit == {"input": 1, "a": 2, "b": 3, "c": 4}
    assert timing.delay == {"a_in": 0, "b_in": 0, "c_main": 0, "c_skip": 1}
    with pytest.raises(TimingError, match="edge a -> c_skip: aligning this path .* needs a delay of 1 steps, more "
                                          "than the hardware's 0"):
        deployment_timing(skip_structure(), 0)


def test_self_recurrence_needs_no_delay():
    timing = deployment_timing(recurrent_structure(), 63)
    assert timing.emit["h"] == 2 and timing.delay["h_rec"] == 0  # Lava's one step is the trained one


def late_recurrent_structure() -> Graph:
    """a reads the input and, recurrently, b; b runs two synapses deep (input -> c -> b)
    without depending on a: no loop, so a can simply wait a step for b."""
    return graph([Input("input", (3,)), Dense("a_in", 3), Dense("a_rec", 3), Sum("a_sum"), LIF("a", (3,)),
                  Dense("c_in", 3), LIF("c", (3,)), Dense("b_in", 3), LIF("b", (3,)), Dense("o_a", 2),
                  Dense("o_b", 2), Sum("o_sum"), LIF("o", (2,)), Output("output")],
                 [("input", "a_in"), Edge("b", "a_rec", recurrent=True), ("a_in", "a_sum"), ("a_rec", "a_sum"),
                  ("a_sum", "a"), ("input", "c_in"), ("c_in", "c"), ("c", "b_in"), ("b_in", "b"), ("a", "o_a"),
                  ("b", "o_b"), ("o_a", "o_sum"), ("o_b", "o_sum"), ("o_sum", "o"), ("o", "output")])


def test_a_recurrent_input_from_a_population_that_runs_later_makes_the_target_wait():
    # b runs at Lava step 3; its spikes of step t - 1 reach a through a_rec at t + 3, so a
    # runs at 3 and its input synapse waits one step. The order of the node list is irrelevant.
    timing = deployment_timing(late_recurrent_structure(), 63)
    assert (timing.emit["a"], timing.emit["b"]) == (3, 3)
    assert (timing.delay["a_in"], timing.delay["a_rec"]) == (1, 0)


def test_feedback_from_a_later_population_cannot_keep_its_trained_timing():
    # b runs one Lava step after a, so b -> a would arrive two steps later; trained: one.
    g = graph([Input("input", (3,)), Dense("a_in", 3), Dense("a_back", 3), Sum("a_sum"), LIF("a", (3,)),
               Dense("b_in", 3), LIF("b", (3,)), Output("output")],
              [("input", "a_in"), ("a_in", "a_sum"), ("a_back", "a_sum"), ("a_sum", "a"), ("a", "b_in"),
               ("b_in", "b"), Edge("b", "a_back", recurrent=True), ("b", "output")])
    with pytest.raises(TimingError, match="recurrent edge b -> a_back: the loop (a -> b -> a|b -> a -> b) takes 2 "
                                          "steps on Lava \\(every synapse adds one\\) but 1 in the trained network"):
        deployment_timing(g, 63)
