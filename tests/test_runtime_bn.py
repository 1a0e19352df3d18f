"""Models with buffers (batch norm) and the data checks of `hybridps run`: the PS holds,
merges and checkpoints the running statistics, evaluates in eval() mode on the whole
held-out split, and checkpoint.pt's model_state_dict reproduces its accuracy in a fresh
model; a job whose data.samples is not the training set's size, or an image folder
without a validation split, is a one-line error (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.torch

from runtime.data import DIGITS_TRAIN, DIGITS_VAL, load_dataset  # noqa: E402
from runtime.models import build_model  # noqa: E402
from runtime.testing import run_cli, spec_args, write_specs  # noqa: E402
from traces.jsonl import read_trace  # noqa: E402

WORKERS = [("w0", 32, 719), ("w1", 32, 718)]  # digits: 1,437


def _accuracy(model, batch: int) -> float:
    ds = load_dataset("digits", DIGITS_TRAIN)
    correct = 0
    with torch.no_grad():
        for lo in range(0, DIGITS_VAL, batch):
            x, y = ds.batch(np.arange(lo, min(DIGITS_VAL, lo + batch)), 8, split="test")
            correct += int((model(x).argmax(1) == y).sum())
    return correct / DIGITS_VAL


@pytest.mark.slow
@pytest.mark.parametrize("sync,exchange", [("bsp", "gradient"), ("asp", "model")])
def test_bn_checkpoint_reproduces_the_runtime_eval_in_a_fresh_model(tmp_path, sync, exchange):
    write_specs(tmp_path, WORKERS, sync=sync, exchange=exchange, epochs=6, lr=0.05, model="cnn-bn", data="digits")
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "60"],
                timeout_s=300)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())
    final = summary["final_eval"]
    assert summary["eval"] == {"split": "test", "samples": DIGITS_VAL, "split_samples": DIGITS_VAL, "mode": "eval"}
    assert final["samples"] == DIGITS_VAL and final["split"] == "test"
    assert final["accuracy"] > 0.8  # it learned
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    state = ck["model_state_dict"]
    assert "bn1.running_mean" in state and "conv1.weight" in state
    model = build_model("cnn-bn", 10)
    model.load_state_dict(state)
    assert float(model.bn1.running_var.sub(1).abs().max()) > 1e-3  # statistics were merged, not the init
    assert int(model.bn1.num_batches_tracked) > 0
    model.eval()
    accs = {b: _accuracy(model, b) for b in (DIGITS_VAL, 7)}
    print(sync, exchange, "runtime", final["accuracy"], "checkpoint", accs)
    assert accs[DIGITS_VAL] == accs[7]  # eval() mode: independent of the batch
    assert abs(accs[DIGITS_VAL] - final["accuracy"]) <= 0.01


def test_cnn_checkpoint_state_dict_loads_and_has_no_buffers(tmp_path):
    # models without buffers: model_state_dict holds exactly the parameters PS trained
    write_specs(tmp_path, WORKERS, epochs=1, lr=0.05, model="cnn", data="digits")
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "60"])
    assert r.returncode == 0, r.stderr
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model("cnn", 10)
    model.load_state_dict(ck["model_state_dict"])
    flat = torch.nn.utils.parameters_to_vector(model.parameters())
    assert torch.equal(flat, ck["params"]) and ck["buffers"].numel() == 0
    assert [e["samples"] for e in read_trace(out / "trace.jsonl").of_kind("eval")] == [DIGITS_VAL]


def _one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr and lines[0].startswith("hybridps: error: ")
    for n in needles:
        assert n in lines[0], lines[0]


def test_data_samples_not_the_training_size_is_one_line_exit_2(tmp_path):
    write_specs(tmp_path, [("w0", 32, 500), ("w1", 32, 500)], epochs=1, lr=0.05, model="mlp", data="digits")
    r = run_cli(["run", *spec_args(tmp_path), "--out", tmp_path / "out", "--local", "--worker-timeout", "30"])
    _one_line_error(r, "data.samples = 1000", "1437", "subset = true")


def test_subset_true_trains_on_the_first_samples(tmp_path):
    write_specs(tmp_path, [("w0", 50, 250), ("w1", 50, 250)], epochs=1, lr=0.05, model="mlp", data="digits")
    job = tmp_path / "job.toml"
    job.write_text(job.read_text().replace("samples = 500\n", "samples = 500\nsubset = true\n"))
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "30"])
    assert r.returncode == 0, r.stderr
    computes = read_trace(out / "trace.jsonl").of_kind("compute")
    assert sum(c.get("samples", c["batch"]) for c in computes) == 500


def test_imagefolder_without_a_validation_split_is_one_line_exit_2(tmp_path):
    (tmp_path / "imgs" / "train" / "a").mkdir(parents=True)
    write_specs(tmp_path, WORKERS, epochs=1, lr=0.05, model="mlp", data="digits")
    r = run_cli(["run", *spec_args(tmp_path), "--out", tmp_path / "out", "--local",
                 "--data", f"imagefolder:{tmp_path / 'imgs'}"])
    _one_line_error(r, "no validation split", "val")


def test_two_shards_final_checkpoint_has_the_whole_model(tmp_path):
    # with 2 PS shards shard 0 holds half the parameters; the final checkpoint's
    # model_state_dict is the whole model (gathered at the last phase end)
    write_specs(tmp_path, WORKERS, epochs=2, lr=0.05, model="cnn-bn", data="digits", ps_count=2)
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--worker-timeout", "60"])
    assert r.returncode == 0, r.stderr
    ck0 = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    ck1 = torch.load(out / "checkpoint-shard1.pt", map_location="cpu", weights_only=True)
    model = build_model("cnn-bn", 10)
    model.load_state_dict(ck0["model_state_dict"])
    assert torch.equal(torch.nn.utils.parameters_to_vector(model.parameters()), torch.cat([ck0["params"], ck1["params"]]))
    model.eval()
    final = json.loads((out / "summary.json").read_text())["final_eval"]
    assert abs(_accuracy(model, 50) - final["accuracy"]) <= 0.01
