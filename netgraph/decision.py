"""The decision rules every backend applies to the output population, defined once.

An Output node names its readout (netgraph.nodes.Output.readout):
    spikes     the class with the most output spikes over the sample (predict_classes);
    potential  the class whose (non-spiking) output neuron ends the sample with the highest
               membrane potential (predict_from_potential): the readout of Lee, Sarwar, Panda,
               Srinivasan & Roy 2019 (output = V(T) / T), among others.
Ties go to the lowest class index in both (numpy's and torch's argmax return the first maximum).
"""
from __future__ import annotations

READOUTS = ("spikes", "potential")


def predict_classes(output_spikes):
    """Class with the most output spikes; ties go to the lowest class index.

    output_spikes: (samples, time, classes) of 0/1, a numpy array or a torch tensor (both
    argmax implementations return the first maximum). Returns (samples,) integer classes
    of the same array type.
    """
    counts = output_spikes.sum(axis=1)
    return counts.argmax(axis=1)


def final_potential(output_potential):
    """The potential the readout reads: the last step's, (samples, time, classes) -> (samples, classes)."""
    return output_potential[:, -1]


def predict_from_potential(output_potential):
    """Class whose output neuron has the highest potential at the sample's last step.

    output_potential: (samples, time, classes), numpy or torch, integer (Loihi units) or float.
    Returns (samples,) integer classes of the same array type."""
    return final_potential(output_potential).argmax(axis=1)


def predict(readout: str, output_spikes, output_potential=None):
    """The Output node's rule (`readout`) applied to what a backend recorded."""
    if readout == "potential":
        if output_potential is None:
            raise ValueError("a potential readout needs the output population's recorded potential")
        return predict_from_potential(output_potential)
    return predict_classes(output_spikes)
