"""Lava (lava-nc 0.10.0) deployment of exported artifacts and the fidelity harness."""
