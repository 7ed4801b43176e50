"""The `stbp` command line: composes the stages (data, trainer, exporter, emulator, Lava,
fidelity harness). Nothing imports this package."""
