"""Export of trained STBP networks to Loihi fixed point: quantization, artifact, emulator."""
