"""The input encodings a network (and its artifact) can name: how a sample becomes spikes.

    bernoulli  static images in [0, 1]: at every step each pixel spikes with its intensity
    events     event frames (already 0/1 spikes per time bin), played as they are
"""
ENCODINGS = ("bernoulli", "events")
