"""The SimPy model of a heterogeneous parameter-server cluster (never imports torch).

Public API (other packages code against this):

    from sim import simulate, SimResult
    result = simulate(cluster, job, plan, seed=None, record=False, trace=None)
    result.makespan_s; result.summary()  # the `simulate --json` dict of DESIGN.md
"""
