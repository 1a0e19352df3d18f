"""Spec loading and validation: every bad-input class gets one clear message naming the
file and the field, and the CLI exits 2 without a traceback."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hybridps.cli import main
from hybridps.errors import SpecError
from hybridps.spec import (
    Compression,
    compressed_bytes,
    example_dir,
    list_examples,
    load_cluster,
    load_job,
    load_plan,
    shard_sizes,
)

CLUSTER = tomllib.loads((example_dir("cluster") / "gtx1080x4.toml").read_text())
JOB = tomllib.loads((example_dir("job") / "cifar100-resnet18.toml").read_text())
PLAN = json.loads((example_dir("plan") / "gtx1080x4-cifar100-dbsl.json").read_text())
UNIFORM = json.loads((example_dir("plan") / "gtx1080x4-cifar100-uniform.json").read_text())


def _toml(d: dict, prefix: str = "") -> str:
    """A tiny TOML writer for test fixtures (tables, arrays of tables, scalars, lists)."""
    lines, tables = [], []
    for k, v in d.items():
        if isinstance(v, dict):
            tables.append((k, v))
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                lines.append(f"\n[[{prefix}{k}]]")
                lines.append(_toml(item, f"{prefix}{k}."))
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    for k, v in tables:
        lines.append(f"\n[{prefix}{k}]")
        lines.append(_toml(v, f"{prefix}{k}."))
    return "\n".join(lines)


def write_files(tmp_path: Path, cluster=None, job=None, plan=None) -> list[str]:
    c, j, p = tmp_path / "cluster.toml", tmp_path / "job.toml", tmp_path / "plan.json"
    c.write_text(_toml(cluster if cluster is not None else CLUSTER))
    j.write_text(_toml(job if job is not None else JOB))
    p.write_text(json.dumps(plan if plan is not None else PLAN))
    return ["check", "--cluster", str(c), "--job", str(j), "--plan", str(p)]


def test_bundled_examples_load_and_plans_check_against_their_cluster():
    pairs = {
        "gtx1080x4-cifar100-dbsl": ("gtx1080x4", "cifar100-resnet18"),
        "gtx1080x4-cifar100-uniform": ("gtx1080x4", "cifar100-resnet18"),
        "rtx3090x4-imagenet-dbsl": ("rtx3090x4", "imagenet-resnet18"),
        "mixed16-imagenet-uniform": ("mixed16", "imagenet-resnet18"),
    }
    assert sorted(pairs) == list_examples("plan")
    for plan_name, (c, j) in pairs.items():
        cluster, job = load_cluster(c), load_job(j)
        plan = load_plan(plan_name, cluster, job)
        for phase in plan.phases:
            assert abs(sum(w.samples for w in phase.workers) - job.data.samples) <= len(phase.workers)
    mixed = load_cluster("mixed16")
    assert len(mixed.worker_list) == 16 and len(mixed.devices) >= 3
    assert [w.name for w in mixed.worker_list if w.slowdown > 1] == ["t4_3"]
    assert mixed.stragglers.rate_per_hour > 0
    assert load_job("cifar100-resnet18").model.parameters == 11_227_812
    assert load_job("imagenet-resnet18").model.parameters == 11_689_512


def test_worker_groups_expand_to_numbered_names():
    names = [w.name for w in load_cluster("gtx1080x4").worker_list]
    assert names == ["gtx0", "gtx1", "gtx2", "gtx3"]


def test_valid_files_pass_check(tmp_path, capsys):
    assert main(write_files(tmp_path)) == 0
    assert "plan ok: 6 phases (checked against cluster and job)" in capsys.readouterr().out


def _mut(base: dict, fn) -> dict:
    d = copy.deepcopy(base)
    fn(d)
    return d


# (name, which file, mutation, expected field path, words the message must contain)
BAD_INPUTS = [
    ("unknown field", "cluster", lambda d: d["ps"].__setitem__("bandwith_gbps", 5.0),
     "ps.bandwith_gbps", ["unknown field", "bandwidth_gbps"]),
    ("unknown field in plan", "plan", lambda d: d["phases"][0].__setitem__("synch", "bsp"),
     "phases[0].synch", ["unknown field"]),
    ("wrong type", "cluster", lambda d: d["workers"][0].__setitem__("bandwidth_gbps", "fast"),
     "workers[0].bandwidth_gbps", ["number", "'fast'"]),
    ("wrong type in job", "job", lambda d: d["data"].__setitem__("samples", "50000"),
     "data.samples", ["integer", "'50000'"]),
    ("missing field", "cluster", lambda d: d["devices"]["gtx1080"]["resolutions"]["32"].pop("b"),
     "devices.gtx1080.resolutions.32.b", ["missing"]),
    ("missing field in job", "job", lambda d: d["model"].pop("parameters"),
     "model.parameters", ["missing"]),
    ("zero bandwidth", "cluster", lambda d: d["ps"].__setitem__("bandwidth_gbps", 0),
     "ps.bandwidth_gbps", ["greater than 0"]),
    ("negative latency", "cluster", lambda d: d["workers"][0].__setitem__("latency_ms", -1.0),
     "workers[0].latency_ms", ["greater than or equal to 0"]),
    ("negative time coefficient", "cluster", lambda d: d["devices"]["gtx1080"]["resolutions"]["24"].__setitem__("a", -0.1),
     "devices.gtx1080.resolutions.24.a", ["greater than or equal to 0"]),
    ("zero samples", "job", lambda d: d["data"].__setitem__("samples", 0),
     "data.samples", ["greater than or equal to 1"]),
    ("zero batch", "plan", lambda d: d["phases"][1]["workers"][2].__setitem__("batch", 0),
     "phases[1].workers[2].batch", ["greater than or equal to 1"]),
    ("unknown device", "cluster", lambda d: d["workers"][0].__setitem__("device", "gtx2080"),
     "workers[0].device", ["unknown device 'gtx2080'", "gtx1080"]),
    ("unknown worker in plan", "plan", lambda d: d["phases"][2]["workers"][1].__setitem__("name", "gtx9"),
     "phases[2].workers[1].name", ["unknown worker 'gtx9'", "gtx0, gtx1, gtx2, gtx3"]),
    ("resolution without profile", "plan", lambda d: d["phases"][0].__setitem__("resolution", 48),
     "phases[0].resolution", ["no profile for resolution 48", "[devices.gtx1080.resolutions.48]"]),
    ("bsp gradient unequal iterations", "plan",
     lambda d: d["phases"][0]["workers"][0].__setitem__("batch", 400),
     "phases[0].workers", ["same iterations per epoch", "gtx0=32", "gtx1=25"]),
    ("samples do not sum to the dataset", "plan", lambda d: d["phases"][3]["workers"][0].__setitem__("samples", 5000),
     "phases[3].workers", ["sum to 44375", "50000"]),
    ("batch above max_batch", "plan", lambda d: d["phases"][1]["workers"][1].__setitem__("batch", 561),
     "phases[1].workers[1].batch", ["exceeds max_batch 560", "gtx1080"]),
    ("ssp without staleness", "plan", lambda d: d["phases"][0].__setitem__("sync", "ssp"),
     "phases[0].staleness", ["ssp", "staleness"]),
    ("compression missing ratio", "plan", lambda d: d["phases"][0].__setitem__("compression", {"kind": "topk"}),
     "phases[0].compression.ratio", ["needs 'ratio'"]),
    ("negative straggler seed", "cluster", lambda d: d.__setitem__("stragglers", {"rate_per_hour": 1.0, "seed": -1}),
     "stragglers.seed", ["greater than or equal to 0"]),
    ("wrong format", "job", lambda d: d.__setitem__("format", "hybridps.job/2"),
     "format", ["hybridps.job/1"]),
]


@pytest.mark.parametrize("name,which,mutate,field,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_clear_message_and_exit_2(tmp_path, capsys, name, which, mutate, field, words):
    base = {"cluster": CLUSTER, "job": JOB, "plan": UNIFORM if "bsp" in name else PLAN}
    files = {k: (_mut(v, mutate) if k == which else v) for k, v in base.items()}
    rc = main(write_files(tmp_path, **files))
    err = capsys.readouterr().err
    assert rc == 2
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line
    suffix = {"cluster": "cluster.toml", "job": "job.toml", "plan": "plan.json"}[which]
    assert f"{suffix}: {field}: " in line, line
    for w in words:
        assert w in line, (w, line)


def test_cli_user_error_has_no_traceback(tmp_path):
    args = write_files(tmp_path, cluster=_mut(CLUSTER, lambda d: d["workers"][0].__setitem__("device", "tpu")))
    proc = subprocess.run([sys.executable, "-m", "hybridps", *args], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("hybridps: error: ") and "Traceback" not in proc.stderr
    assert "workers[0].device: unknown device 'tpu'" in proc.stderr


def test_invalid_toml_and_json_and_missing_file(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("format = \n")
    with pytest.raises(SpecError, match="invalid TOML"):
        load_cluster(bad)
    badj = tmp_path / "p.json"
    badj.write_text("{\"format\": ")
    with pytest.raises(SpecError, match=r"invalid JSON at line 1"):
        load_plan(badj)
    with pytest.raises(SpecError, match="bundled: digits-cpu3, emulated-cpu3, gtx1080x4, mixed16, rtx3090x4"):
        load_cluster("no-such-cluster")


def test_compression_wire_bytes_follow_design_formulas():
    n = 1_000_003
    assert compressed_bytes(Compression(kind="none"), n) == 4 * n
    assert compressed_bytes(Compression(kind="topk", ratio=0.01), n) == 8 * 10_000
    assert compressed_bytes(Compression(kind="randomk", ratio=0.001), n) == 8 * 1_000
    assert compressed_bytes(Compression(kind="onebit"), n) == 125_001 + 4  # ceil(n/8) + 4
    # dithering with 7 levels: 1 sign bit + ceil(log2(8)) = 3 level bits -> 4 bits/element
    assert compressed_bytes(Compression(kind="dithering", levels=7), n) == 500_002 + 4
    # 2 levels: 1 + ceil(log2 3) = 3 bits/element
    assert compressed_bytes(Compression(kind="dithering", levels=2), 8) == 3 + 4
    assert Compression(kind="topk", ratio=0.1).uses_error_feedback
    assert not Compression(kind="onebit", error_feedback=False).uses_error_feedback
    assert not Compression().uses_error_feedback


def test_shard_sizes_split_evenly_first_shards_larger():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert sum(shard_sizes(11_227_812, 7)) == 11_227_812


@pytest.mark.parametrize("command", ["simulate", "plan", "validate", "run"])
def test_negative_seed_is_a_usage_error_for_every_command(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--seed", "-1"])
    assert e.value.code == 2
    assert "--seed: expected a non-negative integer, got -1" in capsys.readouterr().err
