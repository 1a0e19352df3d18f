"""The worker's CUDA transfer path run on CPU: with HYBRIDPS_STAGE_TRANSFERS=1 a CPU
worker stages PS traffic through separate host buffers as a CUDA worker does (pulls land
in them and are copied into the parameters; pushes are copied out of the parameters or
gradients first), so CI without a GPU executes those copies. Plus: a torchvision model's
checkpoint loads into torchvision's own architecture (skipped without torchvision)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch

from runtime.data import load_dataset  # noqa: E402
from runtime.models import build_model  # noqa: E402
from runtime.server import load_checkpoint  # noqa: E402
from runtime.testing import reference_bsp_sgd, run_cli, spec_args, write_specs  # noqa: E402
from runtime.worker import STAGE_ENV  # noqa: E402

LR, MOM, WD = 0.05, 0.9, 1e-3
WORKERS = [("w0", 16, 64), ("w1", 48, 192)]


def _run(d, **spec) -> tuple[torch.Tensor, str]:
    """Run the specs in `d`; returns the final model's parameters and stderr."""
    write_specs(d, WORKERS, lr=LR, momentum=MOM, weight_decay=WD, **spec)
    r = run_cli(["run", *spec_args(d), "--out", d / "out", "--local", "--eval-every", "0", "--eval-samples", "200",
                 "--worker-timeout", "30"])
    assert r.returncode == 0, r.stderr
    model = build_model("mlp", 10)  # the final checkpoint holds the whole model, over any number of shards
    model.load_state_dict(load_checkpoint(d / "out" / "checkpoint.pt")["model_state_dict"])
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach(), r.stderr


def test_staged_bsp_gradient_exchange_over_two_shards_equals_single_process_sgd(tmp_path, monkeypatch):
    monkeypatch.setenv(STAGE_ENV, "1")  # run_cli's children inherit it
    got, err = _run(tmp_path, sync="bsp", exchange="gradient", epochs=2, ps_count=2)
    assert "(worker w0 on cpu, staged transfers) ready" in err and "(worker w1 on cpu, staged transfers)" in err
    ref = reference_bsp_sgd(WORKERS, 2, LR, MOM, WD)
    assert float((got - ref).abs().max()) < 1e-5
    assert float((ref - reference_bsp_sgd(WORKERS, 0, LR, MOM, WD)).abs().max()) > 1e-2  # it trained


def test_staged_lossy_model_exchange_ends_where_the_direct_path_ends(tmp_path, monkeypatch):
    # model exchange with top-k pushes w_local - w_pulled: the staged path keeps `pulled`
    # from the staged pull and copies the difference out; bsp makes both runs deterministic
    spec = dict(sync="bsp", exchange="model", epochs=2, compression={"kind": "topk", "ratio": 0.25})
    direct, err = _run(tmp_path / "direct", **spec)
    assert "staged" not in err
    monkeypatch.setenv(STAGE_ENV, "1")
    staged, err = _run(tmp_path / "staged", **spec)
    assert "staged transfers" in err
    assert float((staged - direct).abs().max()) < 1e-6
    first = _run(tmp_path / "none", **dict(spec, epochs=1))[0]
    assert float((staged - first).abs().max()) > 1e-3  # the second epoch moved it: it trained


def test_torchvision_checkpoint_loads_into_torchvision_resnet18(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    workers = [("w0", 16, 64), ("w1", 16, 64)]
    write_specs(tmp_path, workers, epochs=1, lr=LR, model="torchvision:resnet18", resolution=16)
    out = tmp_path / "out"
    r = run_cli(["run", *spec_args(tmp_path), "--out", out, "--local", "--eval-every", "0", "--eval-samples", "200",
                 "--worker-timeout", "60"], timeout_s=300)
    assert r.returncode == 0, r.stderr
    final = json.loads((out / "summary.json").read_text())["final_eval"]
    ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = torchvision.models.resnet18(num_classes=10)
    model.load_state_dict(ck["model_state_dict"])  # strict: every key of torchvision's layout
    assert int(model.bn1.num_batches_tracked) > 0  # the PS's merged batch-norm statistics
    model.eval()
    ds = load_dataset("synthetic", 128)
    for batch in (200, 7):  # eval() mode: the same figures whatever the evaluation batch
        correct, loss = 0, 0.0
        with torch.no_grad():
            for lo in range(0, 200, batch):
                x, y = ds.batch(np.arange(lo, min(200, lo + batch)), 16, split="test")
                out_ = model(x)
                correct += int((out_.argmax(1) == y).sum())
                loss += float(torch.nn.functional.cross_entropy(out_, y, reduction="sum"))
        assert abs(correct / 200 - final["accuracy"]) <= 0.01
        assert loss / 200 == pytest.approx(final["loss"], rel=1e-3)
