"""Spike source and recorder processes for Lava (kept alone in this folder: Lava imports every
module beside a process when it searches for its models)."""
