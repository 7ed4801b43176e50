"""The decision rule every backend applies to the output population's spikes."""
from __future__ import annotations


def predict_classes(output_spikes):
    """Class with the most output spikes; ties go to the lowest class index.

    output_spikes: (samples, time, classes) of 0/1, a numpy array or a torch tensor (both
    argmax implementations return the first maximum). Returns (samples,) integer classes
    of the same array type.
    """
    counts = output_spikes.sum(axis=1)
    return counts.argmax(axis=1)
