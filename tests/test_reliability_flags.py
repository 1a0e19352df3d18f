"""Flags are range-checked before any work: one `hybridps: error` line, exit 2."""

from __future__ import annotations

import pytest

from hybridps.cli import main

RUN = ["run", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--plan", "gtx1080x4-cifar100-dbsl",
       "--out", "never-written", "--local"]
PLAN = ["plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "-o", "never-written.json"]


@pytest.mark.parametrize("argv", [
    RUN + ["--worker-timeout", "nan"], RUN + ["--worker-timeout", "inf"], RUN + ["--worker-timeout", "0"],
    RUN + ["--checkpoint-every", "nan"], RUN + ["--checkpoint-every", "-1"], RUN + ["--eval-every", "-2"],
    RUN + ["--threads", "-3"], RUN + ["--threads", "0"], RUN + ["--eval-samples", "0"], RUN[:-3] + ["--out", ""],
    PLAN + ["--sync", ","], PLAN + ["--schedule", ","], PLAN + ["--sync", "asp", "--min-bsp-fraction", "1"],
    PLAN + ["--min-bsp-fraction", "nan"],
    PLAN + ["--jobs", "1", "--strategy", "uniform", "--sync", "asp"],  # the uniform baseline is bsp
], ids=lambda a: " ".join(a[-2:]))
def test_bad_flag_values_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:  # argparse types exit themselves; checks in the command return
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if ln.startswith("hybridps: error")]) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written
