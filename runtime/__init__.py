"""The torch.distributed parameter-server runtime: executes plan.json on real processes
(`hybridps run`) and records traces in the shared schema.

  launch    process start-up (--local spawning, torchrun env), no orphans
  server    a PS shard: receives, applies, replies; coordination, trace, checkpoints
  worker    a worker: data share, compute, push/pull, emulated heterogeneity
  protocol  the message header and tags      codecs   compression + error feedback
  merge     the PS's update rules            models / data   what is trained on what
  context   what every rank knows            summary  summary.json from the trace

Uses hybridps.spec, hybridps.stragglers and traces; never sim or solver.
"""
