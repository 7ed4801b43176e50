"""Interchange with the rest of the ecosystem: NIR (the Neuromorphic Intermediate
Representation, nir 1.0.8) out of and into the network graph.

Depends on netgraph and nir only (no torch, no Lava). The NIR neuron conventions and how
they map to the graph's discrete-time LIF are stated once, in `interchange.nir_neurons`.
"""
