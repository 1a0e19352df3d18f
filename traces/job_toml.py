"""Write a Job (with its fitted [convergence] table) as job.toml (hybridps.job/1);
`load_job(path)` of the output gives back an equal Job."""

from __future__ import annotations

from hybridps.spec import Job
from traces.spec_toml import spec_to_toml


def job_to_toml(job: Job, comment: str = "") -> str:
    """The job as TOML text; `comment` lines go on top as '# ...'."""
    return spec_to_toml(job, comment)
