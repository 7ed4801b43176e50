"""STBP trainer: the iterative LIF neuron, surrogate gradients, encoders, data and training.

Import submodules directly (`trainer.neuron`, `trainer.train`, ...); this package module
imports nothing so that torch-free code can use `trainer.provenance`.
"""
