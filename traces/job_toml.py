"""Write a Job (with its fitted [convergence] table) as job.toml (hybridps.job/1).

Uses tomli-w: the job now carries nested tables (convergence.compression,
convergence.fit) and lists of strings, which a hand-written writer would have to quote
and order correctly; `load_job(path)` of the output gives back an equal Job.
"""

from __future__ import annotations

import tomli_w

from hybridps.spec import Job


def job_to_toml(job: Job, comment: str = "") -> str:
    """The job as TOML text; `comment` lines go on top as '# ...'."""
    data = job.model_dump(mode="json", exclude_none=True)
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
    return head + tomli_w.dumps(data)
