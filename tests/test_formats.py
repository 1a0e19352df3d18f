"""docs/formats.md is generated from the models and record kinds; these tests fail when
it is stale, when a documented field is not in the code or a field of the code is not
documented, and they check that a newly added field or record kind is picked up with
no edit to the generator. Also `hybridps schema`'s JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import Field

from hybridps import spec
from hybridps.cli import main
from hybridps.cli import formats_doc
from hybridps.cli.formats_doc import REGENERATE, documented_paths, model_rows, render, trace_rows
from hybridps.cli.schema import spec_schema, trace_schema
from traces import records
from traces.records import RECORD_KINDS

DOC = Path(__file__).resolve().parents[1] / "docs" / "formats.md"


@pytest.fixture(scope="module")
def rendered() -> str:
    return render()


def test_formats_md_is_the_generated_text(rendered):
    assert DOC.read_text(encoding="utf-8") == rendered, f"docs/formats.md is stale; regenerate with: {REGENERATE}"


def _code_paths() -> dict[str, set[str]]:
    summary, names = formats_doc.summary_example()
    return {
        "cluster.toml": {r["path"] for r in model_rows(spec.Cluster)},
        "job.toml": {r["path"] for r in model_rows(spec.Job)},
        "plan.json": {r["path"] for r in model_rows(spec.Plan)},
        "trace.jsonl": {f"{kind}.{name}" for kind, (req, opt) in RECORD_KINDS.items() for name in {**req, **opt}},
        "simulate --json": {r["path"] for r in formats_doc.summary_rows(summary, names)},
        "RUN/summary.json": {r["path"] for r in formats_doc.run_summary_rows(summary, names)},
        "plan --json": {r["path"] for r in formats_doc.summary_rows(formats_doc.ranking_example(), [], {},
                                                                     formats_doc.RANKING_OPAQUE)},
    }


def test_every_documented_field_is_in_the_code_and_every_field_is_documented():
    documented = documented_paths(DOC.read_text(encoding="utf-8"))
    code = _code_paths()
    assert set(documented) == set(code)
    for section, paths in code.items():
        missing = sorted(paths - documented[section])
        extra = sorted(documented[section] - paths)
        assert not missing and not extra, (f"{section}: undocumented {missing}, documented but not in the code "
                                           f"{extra}; regenerate with: {REGENERATE}")
    # a sample of paths, so the walk itself is checked against what a user writes
    assert {"ps.bandwidth_gbps", "devices.NAME.resolutions.R.max_batch", "workers[].slowdown",
            "stragglers.jitter_cv"} <= code["cluster.toml"]
    assert {"phases[].compression.ratio", "phases[].workers[].batch", "meta"} <= code["plan.json"]
    assert {"compute.start_s", "eval.accuracy", "header.plan"} <= code["trace.jsonl"]
    assert {"makespan_s", "workers.NAME.wait_s", "phases[].end_s", "staleness.p99"} <= code["simulate --json"]
    # the run shares them
    assert code["simulate --json"] - {"events", "wall_s"} <= code["RUN/summary.json"]
    assert {"status", "final_eval.accuracy", "evals[].t_s", "parameters.model"} <= code["RUN/summary.json"]
    assert {"best.quality.time_to_target_s", "ranked[].how", "ranked[].baseline", "output"} <= code["plan --json"]
    assert not [p for p in code["plan --json"] if p.startswith(("best.parameters.", "ranked[].parameters."))]


def test_field_rows_carry_unit_default_and_range():
    rows = {r["path"]: r for r in model_rows(spec.Cluster)}
    bw = rows["ps.bandwidth_gbps"]
    assert (bw["unit"], bw["default"], bw["range"]) == ("Gbps (1e9 bit/s)", "10", "> 0, ≤ 1e+06")
    assert rows["ps.latency_ms"]["unit"] == "ms"
    assert rows["stragglers.jitter_cv"]["range"] == "≥ 0, ≤ 2"
    assert rows["workers"]["range"] == "at least 1 item"
    assert rows["workers[].name"]["range"] == "non-empty"
    assert rows["devices.NAME.resolutions.R.a"]["default"] == "required"
    job = {r["path"]: r for r in model_rows(spec.Job)}
    assert job["train.momentum"]["range"] == "≥ 0, < 1"
    assert job["train.lr_milestones"]["default"] == "[]"
    plan = {r["path"]: r for r in model_rows(spec.Plan, json=True)}
    assert plan["phases[].sync"]["type"] == "`bsp` \\| `asp` \\| `ssp`"
    assert plan["phases[].staleness"]["type"] == "int or null"
    assert plan["phases"]["type"] == "array of objects"


def test_a_field_added_to_a_model_is_picked_up_with_its_unit_default_and_range():
    class Convergence(spec._Spec):  # the shape of a table another change adds to Job
        noise_floor: float = Field(0.05, ge=0, le=1)
        warmup_s: float = Field(2.0, gt=0)

    class JobPlus(spec.Job):
        convergence: Convergence | None = None

    rows = {r["path"]: r for r in model_rows(JobPlus)}
    assert rows["convergence"]["type"] == "table or null"
    assert rows["convergence.warmup_s"]["unit"] == "s"
    assert (rows["convergence.noise_floor"]["default"], rows["convergence.noise_floor"]["range"]) == ("0.05",
                                                                                                      "≥ 0, ≤ 1")
    assert rows["convergence.noise_floor"]["meaning"] == formats_doc.NOT_DESCRIBED


def test_a_record_kind_added_to_the_trace_is_picked_up(monkeypatch):
    kinds = dict(RECORD_KINDS)
    kinds["resume"] = ({"t_s": (int, float), "step": (int,)}, {"reason": (str,)})
    monkeypatch.setattr(records, "RECORD_KINDS", kinds)
    rows = {(r["kind"], r["field"]): r for r in trace_rows()}
    assert rows[("resume", "t_s")]["unit"] == "s"
    assert rows[("resume", "reason")]["presence"] == "optional"
    branch = next(b for b in trace_schema()["oneOf"] if b["title"] == "resume")
    assert branch["required"] == ["kind", "t_s", "step"]
    assert branch["properties"]["t_s"] == {"type": "number"}


def test_trace_schema_has_one_closed_branch_per_record_kind():
    schema = trace_schema()
    assert [b["title"] for b in schema["oneOf"]] == list(RECORD_KINDS)
    for branch in schema["oneOf"]:
        required, optional = RECORD_KINDS[branch["title"]]
        assert branch["additionalProperties"] is False
        assert set(branch["properties"]) == {"kind", *required, *optional}
        assert branch["required"] == ["kind", *required]
    compute = next(b for b in schema["oneOf"] if b["title"] == "compute")
    assert compute["properties"]["batch"] == {"type": "integer"}
    assert compute["properties"]["start_s"] == {"type": "number"}


@pytest.mark.parametrize("kind,model", [("cluster", spec.Cluster), ("job", spec.Job), ("plan", spec.Plan)])
def test_schema_command_writes_the_models_json_schema(tmp_path, capsys, kind, model):
    out = tmp_path / f"{kind}.schema.json"
    assert main(["schema", kind, "-o", str(out)]) == 0
    schema = json.loads(out.read_text())
    assert schema == json.loads(json.dumps(spec_schema(kind)))
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert set(schema["properties"]) == set(model.model_fields)
    assert schema["additionalProperties"] is False  # unknown fields are an error, as on load


def test_schema_docs_check_names_the_regenerate_command_when_stale(tmp_path, capsys):
    stale = tmp_path / "formats.md"
    stale.write_text(DOC.read_text(encoding="utf-8").replace("| `ps.count` |", "| `ps.shards` |"))
    assert main(["schema", "docs", "--check", str(stale)]) == 1
    assert f"regenerate with: {REGENERATE}" in capsys.readouterr().out
    assert main(["schema", "docs", "--check", str(DOC)]) == 0


def test_schema_check_on_a_spec_format_is_a_one_line_error(capsys):
    assert main(["schema", "plan", "--check", str(DOC)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--check applies to `hybridps schema docs` only" in err


def test_every_bundled_example_validates_and_is_listed_with_what_it_is(capsys):
    for kind in ("cluster", "job", "plan"):
        for name in spec.list_examples(kind):
            assert main(["check", f"--{kind}", name]) == 0, (kind, name)
    capsys.readouterr()
    assert main(["examples"]) == 0
    out = capsys.readouterr().out
    assert "  emulated-cpu3  3 workers (3 cpu), 1 PS shard\n" in out
    assert "  loop-cnn           cnn (5,418 parameters) on synthetic, 6 epochs at 24/32 px\n" in out
    assert "  mixed16        16 workers (4 rtx3090, 8 v100, 4 t4), 2 PS shards\n" in out


def test_the_loop_inputs_in_docs_loop_md_are_the_bundled_files():
    """docs/loop.md shows emulated-cpu3 and loop-cnn verbatim and runs them by name."""
    import re

    loop = (DOC.parent / "loop.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```toml\n(.*?)```", loop, re.S)
    assert blocks[0] == spec.resolve_path("cluster", "emulated-cpu3").read_text()
    assert blocks[1] == spec.resolve_path("job", "loop-cnn").read_text()
    assert "--base emulated-cpu3" in loop and "--job loop-cnn" in loop
    assert "emulated.toml" not in loop and "--job job.toml" not in loop


def test_a_union_of_tables_by_kind_is_walked_once_per_field():
    """The shape of a `policy` table that differs by kind (a discriminated union)."""
    from typing import Annotated, Literal, Union

    class Greedy(spec._Spec):
        kind: Literal["sync-switch-greedy"]
        threshold_s: float = Field(1.0, gt=0)

    class Rebalance(spec._Spec):
        kind: Literal["lb-rebalance"]
        every_s: float = Field(10.0, gt=0)

    class PhasePlus(spec.Phase):
        policy: Annotated[Union[Greedy, Rebalance], Field(discriminator="kind")] | None = None

    rows = {r["path"]: r for r in model_rows(PhasePlus)}
    assert rows["policy"]["type"] == "table (kind `sync-switch-greedy` \\| `lb-rebalance`) or null"
    assert rows["policy.threshold_s"]["unit"] == "s" and rows["policy.every_s"]["default"] == "10"
    assert [r["path"] for r in model_rows(PhasePlus)].count("policy.kind") == 1
