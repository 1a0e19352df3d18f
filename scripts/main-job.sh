#!/usr/bin/env bash
# The main job on a bundled example, no GPU needed: search the best schedule for
# ResNet-18 / CIFAR-100 on four GTX 1080s (`hybridps plan`), then simulate the plan it
# wrote (`hybridps simulate`) with its trace, Chrome trace and Gantt chart, all in OUT;
# then a quality-aware search on the bundled digits job, whose [convergence] table was
# fitted from real runs: the fastest plan predicted to reach 95% validation accuracy.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
mkdir -p "$out"
.venv/bin/hybridps plan --cluster gtx1080x4 --job cifar100-resnet18 --top 5 -o "$out/plan.json"
.venv/bin/hybridps simulate --cluster gtx1080x4 --job cifar100-resnet18 --plan "$out/plan.json" \
  --trace "$out/trace.jsonl" --chrome "$out/chrome.json" --gantt "$out/gantt.png"
.venv/bin/hybridps plan --cluster digits-cpu3 --job digits-cnn --target-accuracy 0.95 --top 5 \
  -o "$out/plan-digits.json"
echo "wrote $out/plan.json, $out/trace.jsonl, $out/chrome.json, $out/gantt.png, $out/plan-digits.json"
