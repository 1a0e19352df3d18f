"""`hybridps plan` end to end: the bundled examples, and every impossible request
(one line naming the binding constraint, exit 2, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hybridps.cli import main
from hybridps.spec import load_cluster, load_job, load_plan


def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith("hybridps: error: ") and err.count("\n") == 1, err
    return err


def test_time_ratio_below_one_with_small_workers(capsys, tmp_path):
    err = _err(capsys, ["plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--time-ratio", "0.9",
                        "-o", str(tmp_path / "p.json")])
    assert "--time-ratio 0.9: with 1 small worker(s) the extra-time ratio t must be >= 1" in err
    assert not (tmp_path / "p.json").exists()


def test_budget_no_small_batch_can_meet(capsys, tmp_path):
    err = _err(capsys, ["plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--strategy", "dbsl",
                        "--small-workers", "1", "--time-ratio", "1.33", "-o", str(tmp_path / "p.json")])
    assert "no small batch meets the time budget for 'gtx0'" in err and "B_S = b/(T1/d_S - a) = 0.221 (< 1)" in err
    assert "lower --time-ratio or --small-workers" in err


def test_dataset_cannot_be_covered(capsys, tmp_path):
    job = tmp_path / "tiny.toml"
    job.write_text('format = "hybridps.job/1"\n[model]\nname = "m"\nparameters = 1000\n[data]\nname = "d"\n'
                   'samples = 3\n[train]\nepochs = 2\nresolutions = [32]\nbase_batch = 8\nbase_lr = 0.1\n')
    err = _err(capsys, ["plan", "--cluster", "gtx1080x4", "--job", str(job), "--strategy", "balanced",
                        "-o", str(tmp_path / "p.json")])
    assert "the dataset (3 samples per epoch, data.samples) cannot be covered" in err


def test_resolution_missing_for_a_device(capsys, tmp_path):
    err = _err(capsys, ["plan", "--cluster", "gtx1080x4", "--job", "imagenet-resnet18", "-o", str(tmp_path / "p.json")])
    assert "gtx1080x4.toml: devices.gtx1080.resolutions: worker 'gtx0' has no profile for resolution 160" in err


def test_unknown_strategy_through_a_subprocess(tmp_path):
    out = subprocess.run([sys.executable, "-m", "hybridps", "plan", "--cluster", "gtx1080x4", "--job",
                          "cifar100-resnet18", "--strategy", "dbsl,fastest", "-o", str(tmp_path / "p.json")],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip() == ("hybridps: error: --strategy: unknown strategy 'fastest'; use one of: "
                                  "uniform, dbsl, balanced, sync-switch, ssp, or all")


def test_constraints_nothing_satisfies(capsys, tmp_path):
    err = _err(capsys, ["plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--strategy", "dbsl",
                        "--min-bsp-fraction", "0.5", "-o", str(tmp_path / "p.json")])
    assert "no candidate plan satisfies the constraints" in err


# --------------------------------------------------------------------------- the bundled examples

BUNDLED = [
    pytest.param("gtx1080x4", "cifar100-resnet18", id="gtx1080x4-cifar100"),
    pytest.param("rtx3090x4", "imagenet-resnet18", id="rtx3090x4-imagenet"),
    pytest.param("mixed16", "imagenet-resnet18", id="mixed16-imagenet", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("cluster_name, job_name", BUNDLED)
def test_plan_on_bundled_examples_never_slower_than_uniform(capsys, tmp_path, cluster_name, job_name):
    from sim import simulate

    out = tmp_path / "plan.json"
    code = main(["plan", "--cluster", cluster_name, "--job", job_name, "--jobs", "2", "--seed", "0",
                 "--json", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    report = json.loads(captured.out)
    cluster, job = load_cluster(cluster_name), load_job(job_name)
    plan = load_plan(out, cluster, job)  # passes check_plan
    meta = plan.meta
    assert meta["objective"] == "time"
    assert meta["uniform_prediction"] == "full simulation"
    assert meta["predicted_makespan_s"] <= meta["uniform_makespan_s"]
    assert meta["ratio_to_uniform"] == pytest.approx(meta["predicted_makespan_s"] / meta["uniform_makespan_s"])
    assert meta["ratio_to_uniform"] < 1.0
    assert report["best"]["predicted_makespan_s"] == meta["predicted_makespan_s"]
    # the prediction is a full simulation of exactly the plan that was written
    assert meta["prediction"] == "full simulation (seed 0)"
    assert simulate(cluster, job, plan, seed=0).makespan_s == pytest.approx(meta["predicted_makespan_s"], rel=1e-9)
    # the table's rows come best first
    fulls = [r["full_s"] for r in report["ranked"] if r["full_s"] is not None]
    assert fulls == sorted(fulls) and fulls[0] == meta["predicted_makespan_s"]


def test_plan_table_output(capsys, tmp_path):
    out = tmp_path / "plan.json"
    assert main(["plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--top", "3", "-o", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].split() == ["rank", "time_s", "how", "final_acc", "to_target_s", "vs", "uniform", "candidate"]
    assert text[1].split()[0] == "1" and text[1].split()[2] in ("full", "proxy")
    # the baseline is marked, its label is whole (no column cut), quality columns say '-' (not modelled)
    base = [line for line in text if line.rstrip().endswith("[baseline]")]
    assert len(base) == 1 and "uniform(" in base[0] and " 1.000x " in base[0] and base[0].split()[3:5] == ["-", "-"]
    assert any(line.strip().startswith("risk: ") for line in text)
    assert text[-1].startswith(f"wrote {out}: ")


@pytest.mark.parametrize("flag,value,message", [
    ("--time-ratio", "nan", "expected a finite number > 0, got nan"),
    ("--time-ratio", "inf", "expected a finite number > 0, got inf"),
    ("--milp-time-limit", "0", "expected a finite number > 0, got 0"),
    ("--jobs", "0", "expected an integer >= 1, got 0"),
])
def test_nonsense_numeric_flags_are_usage_errors(capsys, flag, value, message):
    with pytest.raises(SystemExit) as e:
        main(["plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", flag, value])
    assert e.value.code == 2
    assert f"argument {flag}: {message}" in capsys.readouterr().err


SNAIL_CLUSTER = """
format = "hybridps.cluster/1"
[devices.gtx1080.resolutions.24]
a = 0.00035268184915307385
b = 0.014788833468238893
max_batch = 600
[devices.gtx1080.resolutions.32]
a = 0.0005056358858583448
b = 0.015562114074817612
max_batch = 560
[[workers]]
name = "gtx"
device = "gtx1080"
count = 3
[[workers]]
name = "snail"
device = "gtx1080"
slowdown = 1e6
"""


def test_a_worker_too_slow_for_any_dbsl_share(capsys, tmp_path):
    """dbsl alone: a clear error naming the worker; all strategies: dbsl is skipped with a note."""
    cluster = tmp_path / "snail.toml"
    cluster.write_text(SNAIL_CLUSTER)
    base = ["plan", "--cluster", str(cluster), "--job", "cifar100-resnet18"]
    assert main(base + ["--strategy", "dbsl", "-o", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "worker 'snail' is so slow" in err and "rounds to 0 samples" in err
    assert main(base + ["--jobs", "1", "-o", str(tmp_path / "p.json")]) == 0
    out = capsys.readouterr()
    assert "note: skipped dbsl small_workers=0" in out.err
    plan = json.loads((tmp_path / "p.json").read_text())
    assert plan["meta"]["strategy"] != "dbsl" and plan["meta"]["ratio_to_uniform"] < 1


# --------------------------------------------------------------------------- -o and --json

PLAN_ARGS = ["plan", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--jobs", "1"]


def test_json_without_o_writes_no_plan_file(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*PLAN_ARGS, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["output"] is None and report["best"]["predicted_makespan_s"] > 0
    assert list(tmp_path.iterdir()) == []
    assert main(PLAN_ARGS) == 0  # without --json the default stays ./plan.json
    assert capsys.readouterr().out.splitlines()[-1].startswith("wrote plan.json: ")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]


def test_replacing_an_existing_plan_is_said_on_stderr(capsys, tmp_path):
    out = tmp_path / "p.json"
    assert main([*PLAN_ARGS, "-o", str(out)]) == 0
    assert "replaced" not in capsys.readouterr().err
    out.write_text("an older plan\n")
    assert main([*PLAN_ARGS, "-o", str(out), "--json"]) == 0
    got = capsys.readouterr()
    assert f"note: replaced the existing {out}\n" in got.err
    assert json.loads(got.out)["output"] == str(out)
    assert load_plan(out, load_cluster("gtx1080x4"), load_job("cifar100-resnet18")).meta["predicted_makespan_s"] == \
        json.loads(got.out)["best"]["predicted_makespan_s"]


# --------------------------------------------------------------------------- progress


class _Bar:
    """Records what score_all shows (a terminal's tqdm bar, here without a terminal)."""

    made: list["_Bar"] = []

    def __init__(self, total, desc, unit="it"):
        self.total, self.desc, self.unit, self.n, self.shown = total, desc, unit, 0, []
        _Bar.made.append(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, k):
        self.n += k
        self.shown.append(self.n)


@pytest.mark.parametrize("jobs", [1, 2])
def test_search_progress_counts_simulated_epochs(monkeypatch, jobs):
    import solver.search as search_mod
    from solver.candidates import Constraints

    monkeypatch.setattr(search_mod, "progress_bar", _Bar)
    _Bar.made = []
    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    search_mod.search(cluster, job, Constraints(strategies=("uniform", "dbsl")), seed=0, jobs=jobs, full_count=1)
    assert {b.unit for b in _Bar.made} == {"epoch"} and {b.desc for b in _Bar.made} >= {"proxy", "full"}
    for bar in _Bar.made:
        assert bar.n == bar.total and bar.shown == sorted(bar.shown)
    full = [b for b in _Bar.made if b.desc == "full"]
    assert sum(b.total for b in full) == 2 * job.train.epochs  # the best dbsl plan and the uniform baseline
    if jobs == 1:  # inline, the bar moves at every simulated epoch, not once per plan
        assert all(len(set(b.shown)) == b.total for b in full)
