"""The shared execution rules (hybridps/semantics.py) on constructed event sequences, and
the import structure that keeps them shared: no circle between sim's modules."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import numpy as np
import pytest

from hybridps.semantics import Ledger, SSPGate, VersionClock

ROOT = Path(__file__).resolve().parent.parent


def test_ssp_gate_holds_a_worker_more_than_bound_ahead_and_releases_it():
    gate = SSPGate(1, [0, 1, 2])
    for _ in range(2):
        gate.exchanged(0)
    gate.exchanged(1)
    assert gate.ahead(0) == 2 and not gate.may_start(0)  # 2 - 0 > 1
    assert gate.may_start(1) and gate.may_start(2)
    gate.hold(0)
    assert gate.release() == []  # worker 2 has still done nothing
    gate.exchanged(2)
    assert gate.release() == [0]  # 2 - 1 <= 1
    assert gate.waiting == []


def test_ssp_gate_a_stopped_worker_no_longer_holds_anyone_back():
    gate = SSPGate(0, [0, 1])
    gate.exchanged(0)
    gate.hold(0)
    assert gate.release() == []
    gate.leave(1)  # worker 1 stopped for the phase
    assert gate.release() == [0]
    gate.leave(0)
    assert gate.ahead(0) == 0 and gate.may_start(0)  # nobody left: nobody waits


def test_ssp_gate_without_bound_never_holds_and_releases_in_waiting_order():
    free = SSPGate(None, [0, 1])
    for _ in range(5):
        free.exchanged(0)
    assert free.may_start(0)
    gate = SSPGate(0, [0, 1, 2])
    gate.exchanged(2)
    gate.exchanged(0)
    gate.hold(2)
    gate.hold(0)
    gate.exchanged(1)
    assert gate.release() == [2, 0]


def test_ssp_gate_kept_minimum_equals_the_definition():
    """The gate keeps the slowest active worker's count instead of recomputing it: checked
    against `c - min over active` on seeded random exchange/leave sequences."""
    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        gate = SSPGate(int(rng.integers(0, 4)), range(n))
        for _ in range(60):
            w = int(rng.integers(0, n))
            if rng.random() < 0.08:
                gate.leave(w)
            else:
                gate.exchanged(w)
            active = [v for v in range(n) if v in gate.active]
            for v in range(n):
                want = gate.counts[v] - min(gate.counts[a] for a in active) if active else 0
                assert gate.ahead(v) == want


def test_version_clock_phase_start_counts_as_a_pull():
    clock = VersionClock()
    clock.start_phase([0, 1])
    assert clock.apply_push(0) == (1, 0)
    assert clock.apply_push(1) == (2, 1)  # worker 1 read version 0; one update since
    clock.pulled(0)
    clock.pulled(1)
    clock.apply_push(0)
    assert clock.apply_push(0)[1] == 1  # worker 0 has not pulled version 3
    assert clock.apply_round([0]) == 5
    assert clock.apply_push(0) == (6, 0) and clock.apply_push(1)[1] == 4  # 1 read 2; 3 to 6 since
    clock.start_phase([0, 1])  # the next phase starts from version 7 for everyone
    assert clock.apply_push(1) == (8, 0)


def test_ledger_epoch_ends_are_counted_across_phases_and_capped():
    ledger = Ledger(100, [2, 1], eval_every=1)
    ledger.start_phase(0, 2)
    assert ledger.apply(60, 1.0) == ()
    assert ledger.apply(60, 2.0) == (1,)
    assert not ledger.worker_done(0)
    assert ledger.apply(90, 3.0) == (2,)
    assert ledger.worker_done(0) and ledger.worker_done(1)  # the sample target stops every worker
    assert ledger.evaluation_due(1) and not ledger.evaluation_due(2)  # epoch 2 ends the phase
    ledger.start_phase(1, 2)
    assert ledger.applied_in_phase == 0 and ledger.epochs_before[ledger.phase] == 2
    assert ledger.apply(200, 4.0) == (3,)  # the run has 3 epochs: no fourth end
    assert ledger.epoch_end_s == [2.0, 3.0, 4.0]


def test_ledger_eval_every_and_a_resumed_phase():
    ledger = Ledger(10, [4], eval_every=2, applied_total=15, epoch_end_s=[0.5])
    ledger.start_phase(0, 1, applied=15)
    assert ledger.apply(5, 1.0) == (2,)
    assert [e for e in (1, 2, 3, 4) if ledger.evaluation_due(e)] == [2]
    assert Ledger(10, [4], eval_every=0).evaluation_due(2) is False


def test_ledger_mini_epoch_rule_stops_each_worker_after_its_own_commits():
    """Shares summing to N - 1: on samples the phase would need one more mini-epoch from
    each worker; on commits each worker stops after exactly `epochs` of them."""
    ledger = Ledger(100, [2])
    ledger.start_phase(0, [0, 1], mini_epochs=True)
    for _ in range(2):
        for w, share in ((0, 50), (1, 49)):
            assert not ledger.worker_done(w)
            ledger.apply(share, 1.0)
            ledger.commit([w])
    assert ledger.applied_in_phase == 198 and ledger.worker_done(0) and ledger.worker_done(1)
    assert ledger.epoch_end_s == [1.0]  # 198 samples end one epoch on samples ...
    assert ledger.end_phase(2.0) == (2,) and ledger.epoch_end_s == [1.0, 2.0]  # ... the phase ends the 2nd
    assert ledger.applied_total == 200 and ledger.end_phase(3.0) == ()


def test_ledger_end_phase_leaves_sample_phases_and_full_shares_alone():
    ledger = Ledger(100, [1, 1])
    ledger.start_phase(0, [0, 1])  # the sample rule: the phase ran to its target
    ledger.apply(99, 1.0)
    assert ledger.end_phase(1.0) == () and ledger.applied_total == 99
    ledger.start_phase(1, [0, 1], mini_epochs=True)
    ledger.apply(102, 2.0)  # shares one over per worker: the samples already ended the epoch
    assert ledger.end_phase(3.0) == () and ledger.epoch_end_s == [2.0, 2.0] and ledger.applied_total == 201


def test_ledger_mini_epoch_rule_a_fast_worker_stops_while_the_slow_one_goes_on():
    """No barrier and no sample target: a worker's own count decides, whatever the others
    have committed or the applied samples say (DBSL's stage switch)."""
    ledger = Ledger(100, [2])
    ledger.start_phase(0, [0, 1], mini_epochs=True, commits={0: 1})  # a resumed run: one already in
    assert not ledger.worker_done(0)
    ledger.apply(50, 1.0)
    ledger.commit([0])  # the fast worker's 2nd mini-epoch: it stops, the slow one does not
    assert ledger.worker_done(0) and not ledger.worker_done(1)
    ledger.apply(300, 2.0)  # far past the 200-sample target: still not done
    assert not ledger.worker_done(1)
    ledger.commit([1])
    assert not ledger.worker_done(1)
    ledger.commit([1])  # ... its own 2nd commit stops it
    assert ledger.worker_done(1)
    ledger.start_phase(0, [0, 1], mini_epochs=False)
    ledger.commit([0, 0, 1, 1])
    assert not ledger.worker_done(0)  # the sample rule ignores commits
    ledger.apply(200, 3.0)
    assert ledger.worker_done(0) and ledger.worker_done(1)


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_sim_engine_ps_worker_form_no_circle():
    """engine imports ps and worker; neither imports the engine or the other, even for typing."""
    assert not {"sim.engine", "sim.worker"} & _imports(ROOT / "sim" / "ps.py")
    assert not {"sim.engine", "sim.ps"} & _imports(ROOT / "sim" / "worker.py")


def test_semantics_is_standard_library_only():
    allowed = {"__future__", "typing"}
    assert _imports(ROOT / "hybridps" / "semantics.py") <= allowed


@pytest.mark.parametrize("package", ["hybridps", "sim", "solver", "traces",
                                     pytest.param("runtime", marks=pytest.mark.torch)])
def test_every_module_imports_on_its_own(package):
    """A circle between modules shows up as an ImportError when one is imported first."""
    if package == "runtime":
        pytest.importorskip("torch")  # the runtime is torch's side of the project
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name == "__main__":
            continue  # runs the command line
        importlib.import_module(f"{package}.{info.name}")


# --- the mini-epoch rule in the simulator ---------------------------------------------

def _count(kind: str, cluster, job, plan) -> dict[tuple[int, str], int]:
    """Records of `kind` per (phase, worker) in a real simulation: "push", or "update" (an
    applied model-exchange commit)."""
    from collections import Counter

    from sim import simulate

    return dict(Counter((r["phase"], r["worker"]) for r in simulate(cluster, job, plan, record=True).records
                        if r["kind"] == kind))


def _pushes(cluster, job, plan) -> dict[tuple[int, str], int]:
    return _count("push", cluster, job, plan)


def _updates_per_worker(cluster, job, plan) -> dict[tuple[int, str], int]:
    return _count("update", cluster, job, plan)


def _assert_exactly_epochs(plan, counts) -> None:
    """Every worker of every phase committed exactly the phase's epochs as mini-epochs."""
    want = {(p, wa.name): ph.epochs for p, ph in enumerate(plan.phases) for wa in ph.workers}
    assert counts == want


def _short_by_one(plan, cluster, job, **phase):
    """The plan with one sample less in the first worker's share: shares sum to N - 1."""
    from hybridps.spec import plan_from_dict

    d = plan.to_json_dict()
    for ph in d["phases"]:
        ph["workers"][0]["samples"] -= 1
        ph.update(phase)
    return plan_from_dict(d, "test", cluster, job)


def test_dbsl_journal_configuration_runs_exactly_its_mini_epochs():
    """The DBSL journal's CIFAR-100 configuration (gtx1080x4, time ratio 1.1, 3 small
    workers, cyclic 40/40/20/20/10/10): its rounded shares sum to 49,999, and each worker
    commits exactly each phase's epochs, 4 x 140 = 560 (the sample rule ran 564)."""
    from hybridps.spec import load_cluster, load_job
    from solver.candidates import dbsl_plan

    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    plan, _ = dbsl_plan(cluster, job, 1.1, 3, "cyclic")
    assert {sum(wa.samples for wa in ph.workers) for ph in plan.phases} == {job.data.samples - 1}
    counts = _updates_per_worker(cluster, job, plan)
    _assert_exactly_epochs(plan, counts)
    assert sum(counts.values()) == 560


@pytest.mark.parametrize("cluster_name, job_name, plan_name, total", [
    ("gtx1080x4", "cifar100-resnet18", "gtx1080x4-cifar100-dbsl", 4 * 140),  # the sample rule ran 563
    ("rtx3090x4", "imagenet-resnet18", "rtx3090x4-imagenet-dbsl", 4 * 105),  # ... and 429
])
def test_bundled_dbsl_plans_run_exactly_their_mini_epochs(cluster_name, job_name, plan_name, total):
    from hybridps.spec import load_cluster, load_job, load_plan

    cluster, job = load_cluster(cluster_name), load_job(job_name)
    plan = load_plan(plan_name, cluster, job)
    counts = _updates_per_worker(cluster, job, plan)
    _assert_exactly_epochs(plan, counts)
    assert sum(counts.values()) == total


def test_dbsl_plan_with_shares_one_short_runs_no_extra_mini_epochs():
    """The bundled CIFAR-100 DBSL plan (asp, 40 + 40 + 20 + ... mini-epochs) and the same
    plan with shares summing to N - 1 run the same mini-epochs per phase and worker:
    exactly each phase's epochs (on samples alone the short one ran 584 exchanges and the
    exact one 563)."""
    from hybridps.spec import load_cluster, load_job, load_plan

    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    plan = load_plan("gtx1080x4-cifar100-dbsl", cluster, job)
    exact = _pushes(cluster, job, plan)
    assert _pushes(cluster, job, _short_by_one(plan, cluster, job)) == exact
    assert sum(exact.values()) == 560
    for (p, _), n in exact.items():
        assert n == plan.phases[p].epochs


def test_shares_one_short_still_end_every_epoch_at_its_phase_end():
    """Shares summing to N - 1 under the mini-epoch rule: on samples the last epoch of the
    run never ended (139 of 140 epoch ends); each phase's last epoch now ends with it."""
    from hybridps.spec import load_cluster, load_job, load_plan
    from sim import simulate

    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    plan = _short_by_one(load_plan("gtx1080x4-cifar100-dbsl", cluster, job), cluster, job)
    res = simulate(cluster, job, plan)
    ends = res.counters.epoch_end_s
    assert len(ends) == sum(ph.epochs for ph in plan.phases) == 140
    first_epoch = 0
    for (start_s, end_s), ph in zip(res.counters.phases, plan.phases):
        first_epoch += ph.epochs
        assert ends[first_epoch - 1] == end_s  # the phase's last epoch ends with the phase
        assert all(start_s <= t <= end_s for t in ends[first_epoch - ph.epochs:first_epoch])


def test_bsp_mini_epochs_with_shares_one_short_run_exactly_epochs_rounds():
    from hybridps.spec import load_cluster, load_job, load_plan

    cluster, job = load_cluster("gtx1080x4"), load_job("cifar100-resnet18")
    plan = _short_by_one(load_plan("gtx1080x4-cifar100-dbsl", cluster, job), cluster, job, sync="bsp")
    for (p, _), n in _pushes(cluster, job, plan).items():
        assert n == plan.phases[p].epochs
