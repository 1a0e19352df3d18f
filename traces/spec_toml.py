"""Write a spec (cluster.toml, job.toml) as TOML with tomli-w: the standard library reads
TOML but does not write it, and a hand-written writer has to get quoting, nesting and
float round-tripping right on its own. Loading the output gives back an equal spec."""

from __future__ import annotations

import tomli_w
from pydantic import BaseModel


def spec_to_toml(spec: BaseModel, comment: str = "") -> str:
    """The spec as TOML text, every field written (defaults too, so the file says what a
    run used); `comment` lines go on top as '# ...'."""
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment.splitlines())
    return head + tomli_w.dumps(spec.model_dump(mode="json", exclude_none=True))
