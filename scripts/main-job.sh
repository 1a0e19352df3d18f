#!/usr/bin/env bash
# The main job on a bundled example: simulate the DBSL plan for ResNet-18 / CIFAR-100 on
# four GTX 1080s and write its summary, trace, Chrome trace and Gantt chart to OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out}
mkdir -p "$out"
.venv/bin/hybridps simulate --cluster gtx1080x4 --job cifar100-resnet18 --plan gtx1080x4-cifar100-dbsl \
  --json --trace "$out/trace.jsonl" --chrome "$out/chrome.json" --gantt "$out/gantt.png" > "$out/summary.json"
.venv/bin/python -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"predicted makespan {s['makespan_s']:.1f} s, {s['updates']} updates\")" "$out/summary.json"
echo "wrote $out/summary.json, $out/trace.jsonl, $out/chrome.json, $out/gantt.png"
