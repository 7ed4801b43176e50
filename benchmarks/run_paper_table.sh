#!/usr/bin/env bash
# Every row of the paper-comparison table in benchmarks/RESULTS.md, one JSON line each,
# appended to ${1:-benchmarks/paper_table.jsonl}. Epoch counts are CPU-budget choices
# (see RESULTS.md); raise them on a GPU machine. The longer MNIST runs in RESULTS.md
# continue these runs' checkpoints (bench_paper.py --resume, commands listed there).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-benchmarks/paper_table.jsonl}"
py=(python benchmarks/bench_paper.py)
keep_rows() { grep '^{' >> "$out"; }  # the JSON rows; training progress lines are dropped
"${py[@]}" --label nmnist_mlp --config configs/nmnist_mlp.yaml --lava-samples 199 --output-dir runs/paper/nmnist_mlp | keep_rows
"${py[@]}" --label mnist_cnn --config configs/mnist_cnn.yaml --epochs 3 --lava-samples 1000 --output-dir runs/paper/mnist_cnn | keep_rows
"${py[@]}" --label mnist_mlp --config configs/mnist_mlp.yaml --epochs 3 --lava-samples 1000 --output-dir runs/paper/mnist_mlp | keep_rows
for surrogate in h1 h2 h3 h4; do
  "${py[@]}" --label "stbp_784-400-10_$surrogate" --config configs/mnist_mlp.yaml --epochs 2 --lava-samples 0 \
    --set model.layers=784-400-10 --set model.surrogate=$surrogate --output-dir "runs/paper/stbp_$surrogate" | keep_rows
done
"${py[@]}" --label sdbp_784-400-10_h1 --config configs/mnist_mlp.yaml --epochs 2 --lava-samples 0 \
  --set model.layers=784-400-10 --set model.temporal_gradient=false --output-dir runs/paper/sdbp_h1 | keep_rows
