"""Every numeric field of cluster, job (its [convergence] table too) and plan refuses inf,
-inf, 1e308 and 2**64 with a SpecError naming the field; so does a job or plan whose
total work would hang the simulator; spec files that are binary, Latin-1, nested too
deeply or that repeat a key are one line, exit 2."""

from __future__ import annotations

import copy
import json

import pytest

from hybridps.cli import main
from hybridps.errors import SpecError
from hybridps.spec import (cluster_from_dict, job_from_dict, load_cluster, load_job, load_plan, plan_from_dict)

HUGE = [float("inf"), float("-inf"), 1e308, 2**64]


def _bases() -> dict:
    cluster = load_cluster("mixed16").model_dump(mode="json")
    job = load_job("cifar100-resnet18").model_dump(mode="json")
    plan = load_plan("gtx1080x4-cifar100-dbsl").model_dump(mode="json")
    ph = plan["phases"][0]  # fill the optional numbers too
    plan["phases"].append(dict(ph, sync="ssp", staleness=2, local_steps=2,
                               compression={"kind": "dithering", "levels": 4, "normalize": "max"}))
    plan["phases"].append(dict(ph, compression={"kind": "topk", "ratio": 0.1}))
    job["train"]["lr_milestones"] = [1]
    job["convergence"] = load_job("digits-cnn").model_dump(mode="json")["convergence"]  # the bundled fit
    job["convergence"]["compression"] = {"topk": 0.7}
    return {"cluster": cluster, "job": job, "plan": plan}


def _numeric_paths(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k != "meta":
                yield from _numeric_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numeric_paths(v, path + (i,))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path


BASES = _bases()
LOADERS = {"cluster": cluster_from_dict, "job": job_from_dict, "plan": plan_from_dict}
CASES = [(kind, path) for kind, base in BASES.items() for path in _numeric_paths(base)]


def test_every_kind_of_numeric_field_is_covered():
    fields = {(kind, tuple(p for p in path if not isinstance(p, int))) for kind, path in CASES}
    assert len(fields) >= 40  # cluster: ps, devices, workers, stragglers; job; plan phases and workers
    for kind, base in BASES.items():
        LOADERS[kind](base)  # the bases themselves are valid


@pytest.mark.parametrize("value", HUGE, ids=["inf", "-inf", "1e308", "2^64"])
@pytest.mark.parametrize("kind,path", CASES, ids=[f"{k}:{'.'.join(map(str, p))}" for k, p in CASES])
def test_non_finite_or_huge_numbers_are_refused(kind, path, value):
    data = copy.deepcopy(BASES[kind])
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(SpecError) as e:
        LOADERS[kind](data, f"{kind}.file")
    assert e.value.file == f"{kind}.file" and e.value.field


def test_huge_worker_count_is_refused_before_expanding(tmp_path):
    data = copy.deepcopy(BASES["cluster"])
    data["workers"] = [dict(data["workers"][0], count=5_000), dict(data["workers"][1], count=5_001)]
    with pytest.raises(SpecError, match="at most 10,000"):
        cluster_from_dict(data)


def test_convergence_fields_are_in_the_base():
    fields = {path[1] for kind, path in CASES if kind == "job" and path[0] == "convergence"}
    assert {"lr_max", "noise_scale", "drift_steps", "loss_progress", "fit", "compression"} <= fields


def test_check_refuses_a_job_that_would_hang_plan(tmp_path, capsys):
    """10^11 samples x 100,000 epochs at base_batch 500: 2 x 10^13 iterations."""
    from traces.job_toml import job_to_toml

    job = load_job("cifar100-resnet18")
    big = job.model_copy(update={"data": job.data.model_copy(update={"samples": 10**11}),
                                 "train": job.train.model_copy(update={"epochs": 100_000})})
    path = tmp_path / "big.toml"
    path.write_text(job_to_toml(big))
    assert main(["check", "--job", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "train.epochs" in err, err
    assert "20,000,000,000,000 iterations (at most 100,000,000)" in err


def test_check_refuses_a_plan_that_would_hang_simulate(tmp_path, capsys):
    """Batch 1 on every worker for 100,000 epochs: 5 x 10^9 worker-iterations in phase 0 alone."""
    plan = copy.deepcopy(BASES["plan"])
    plan["phases"] = plan["phases"][:1]
    plan["phases"][0]["epochs"] = 100_000
    for w in plan["phases"][0]["workers"]:
        w["batch"] = 1
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    assert main(["check", "--cluster", "gtx1080x4", "--job", "cifar100-resnet18", "--plan", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "phases" in err and "5,000,000,000 iterations" in err, err


def test_check_refuses_inf_in_a_toml_file(tmp_path, capsys):
    src = load_cluster("gtx1080x4")  # any bundled file, with one number made infinite
    text = (tmp_path / "c.toml")
    from traces.cluster_toml import cluster_to_toml
    text.write_text(cluster_to_toml(src).replace("latency_ms = 0.05", "latency_ms = inf", 1))
    assert "latency_ms = inf" in text.read_text()
    assert main(["check", "--cluster", str(text)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "latency_ms" in err and "finite" in err


@pytest.mark.parametrize("name,content", [
    ("binary.toml", bytes(range(256))),
    ("latin1.toml", 'format = "hybridps.cluster/1"\n# caf\xe9\n'.encode("latin-1")),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000),
    ("deep.toml", b"a = " + b"[" * 100_000 + b"]" * 100_000),
    ("dup.json", b'{"format": "hybridps.plan/1", "format": "hybridps.plan/1", "phases": []}'),
    ("nan.json", b'{"format": "hybridps.plan/1", "phases": [], "x": NaN}'),
    ("dupres.toml", b'format = "hybridps.cluster/1"\n[devices.d.resolutions."8"]\na = 1.0\nb = 1.0\nmax_batch = 1\n'
                    b'[devices.d.resolutions." 8"]\na = 2.0\nb = 1.0\nmax_batch = 1\n'
                    b'[[workers]]\nname = "w"\ndevice = "d"\n'),
])
def test_bad_files_are_one_line_exit_2(tmp_path, capsys, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    flag = "--plan" if name.endswith(".json") else "--cluster"
    assert main(["check", flag, str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(path) in err, err
