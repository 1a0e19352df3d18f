"""Flags are range-checked before any work: one `hybridps: error` line, exit 2."""

from __future__ import annotations

import pytest

from hybridps.cli import main

RUN = ["run", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--plan", "gtx1080x4-cifar100-dbsl",
       "--out", "never-written", "--local"]
PLAN = ["plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "-o", "never-written.json"]
CALIBRATE = ["calibrate", "trace.jsonl", "-o", "never-written.toml"]
PROFILE = ["profile", "--model", "mlp", "--out", "never-written.jsonl"]
VALIDATE = ["validate", "--trace", "trace.jsonl"]


@pytest.mark.parametrize("argv", [
    RUN + ["--worker-timeout", "nan"], RUN + ["--worker-timeout", "inf"], RUN + ["--worker-timeout", "0"],
    RUN + ["--checkpoint-every", "nan"], RUN + ["--checkpoint-every", "-1"], RUN + ["--eval-every", "-2"],
    RUN + ["--threads", "-3"], RUN + ["--threads", "0"], RUN + ["--eval-samples", "0"], RUN[:-3] + ["--out", ""],
    PLAN + ["--sync", ","], PLAN + ["--schedule", ","], PLAN + ["--sync", "asp", "--min-bsp-fraction", "1"],
    PLAN + ["--min-bsp-fraction", "nan"],
    PLAN + ["--jobs", "1", "--strategy", "uniform", "--sync", "asp"],  # the uniform baseline is bsp
    PLAN + ["--small-workers", "-3"], PLAN + ["--small-workers", "10000"], PLAN + ["--substages", "0"],
    PLAN + ["--substages", "1000"], PLAN + ["--top", "0"], PLAN + ["--top", "1e9"], PLAN + ["--top", "1000000000"],
    PLAN + ["--proxy-epochs", "0"], PLAN + ["--proxy-epochs", "1000000000"], PLAN + ["--proxy-count", "-1"],
    PLAN + ["--full-count", "-1"], PLAN + ["--full-count", "100000"],
    CALIBRATE + ["--outlier-factor", "nan"], CALIBRATE + ["--outlier-factor", "inf"],
    CALIBRATE + ["--outlier-factor", "1"], CALIBRATE + ["--outlier-factor", "1e9"],
    PROFILE + ["--resolutions", "100000", "--batches", "4"], PROFILE + ["--resolutions", "8", "--batches", "0"],
    PROFILE + ["--resolutions", "8", "--batches", "4", "--max-batch", "1000000000"],
    PROFILE + ["--resolutions", "8", "--batches", "4", "--repeats", "0"],
    PROFILE + ["--resolutions", "8", "--batches", "4", "--warmup", "-1"],
    PROFILE + ["--resolutions", "8", "--batches", "4", "--threads", "-1"],
    PROFILE + ["--resolutions", "8", "--batches", "4", "--classes", "0"],
    VALIDATE + ["--repeats", "0"], VALIDATE + ["--repeats", "1000000"],
], ids=lambda a: " ".join(a[-2:]))
def test_bad_flag_values_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:  # argparse types exit themselves; checks in the command return
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if ln.startswith("hybridps: error")]) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_profile_refuses_an_input_batch_that_cannot_fit(capsys, tmp_path, monkeypatch):
    """Each flag in range, together too large: 256 x 3 x 4096^2 float32 is 48 GiB."""
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    assert main(PROFILE + ["--resolutions", "4096", "--batches", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "48.0 GiB" in err and "--max-batch 256" in err, err
    assert not list(tmp_path.iterdir())


def test_chrome_refuses_more_bins_than_a_browser_opens(capsys, tmp_path):
    """--bin-s is positive and finite, but 1e-9 s over an 884 s trace is 8.8 x 10^11 bins."""
    trace = tmp_path / "t.jsonl"
    assert main(["simulate", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--plan",
                 "gtx1080x4-cifar100-dbsl", "--trace", str(trace)]) == 0
    capsys.readouterr()
    assert main(["chrome", str(trace), "-o", str(tmp_path / "c.json"), "--bin-s", "1e-9"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "872,717,173,510 bins (at most 100,000)" in err, err
    assert not (tmp_path / "c.json").exists()
