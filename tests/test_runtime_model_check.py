"""`hybridps run` checks the job's model size against the model it builds: more than 1%
off is a user error (exit 2, one line), less is a warning recorded in summary.json;
bytes_per_parameter other than 4 is rejected (the runtime exchanges fp32)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from hybridps.errors import UserError  # noqa: E402
from hybridps.spec import load_job  # noqa: E402
from hybridps.cli.run import check_model  # noqa: E402
from runtime.models import build_model, count_parameters  # noqa: E402
from runtime.testing import run_cli, spec_args, write_specs  # noqa: E402

WORKERS = [("w0", 32, 128), ("w1", 32, 128)]
MLP = count_parameters(build_model("mlp", 10))  # 13,002: 192*64+64 + 64*10+10


def _specs(tmp_path, parameters=None, bytes_per_parameter=None):
    write_specs(tmp_path, WORKERS, epochs=1, lr=0.05)
    job = tmp_path / "job.toml"
    text = job.read_text()
    if parameters is not None:
        text = text.replace(f"parameters = {MLP}\n", f"parameters = {parameters}\n")
    if bytes_per_parameter is not None:
        text = text.replace("[data]", f"bytes_per_parameter = {bytes_per_parameter}\n[data]")
    job.write_text(text)


def _run(tmp_path):
    return run_cli(["run", *spec_args(tmp_path), "--out", tmp_path / "out", "--local", "--eval-every", "0",
                    "--eval-samples", "100", "--worker-timeout", "30"])


def test_parameter_count_more_than_1_percent_off_is_exit_2_naming_both_counts(tmp_path):
    assert MLP == 13_002
    _specs(tmp_path, parameters=1000)
    r = _run(tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for part in ("job.toml", "model.parameters = 1,000", "13,002", "set model.parameters = 13002", "--model"):
        assert part in lines[0], lines[0]
    assert not (tmp_path / "out").exists()  # nothing started


def test_bytes_per_parameter_other_than_4_is_exit_2(tmp_path):
    _specs(tmp_path, parameters=MLP, bytes_per_parameter=2)
    r = _run(tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "model.bytes_per_parameter = 2" in lines[0] and "fp32" in lines[0]


def test_parameter_count_less_than_1_percent_off_warns_once_and_summary_records_both(tmp_path):
    declared = MLP + 100  # 0.77% off
    _specs(tmp_path, parameters=declared)
    r = _run(tmp_path)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1, r.stderr  # once, not once per rank
    assert "model.parameters = 13,102" in warnings[0] and "13,002" in warnings[0] and "0.77%" in warnings[0]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["parameters"] == {"model": 13_002, "job": 13_102}
    assert summary["status"] == "complete"


def test_bundled_cifar100_job_is_within_1_percent_of_the_runtime_resnet18():
    # the job gives torchvision's layout (11,227,812); the runtime's CIFAR ResNet-18 has
    # 11,220,132 with 100 classes: 0.07% off, a warning
    job = load_job("cifar100-resnet18")
    note = check_model(job, "cifar100-resnet18", None, "synthetic:100", None, 0)
    assert "11,227,812" in note and "11,220,132" in note and "0.07%" in note
    with pytest.raises(UserError, match="choose the matching --model"):
        check_model(job, "cifar100-resnet18", "mlp", "synthetic:100", None, 0)
