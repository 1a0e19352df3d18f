"""Progress bars on a terminal (stderr), silence in pipes and CI."""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: float | None, desc: str, unit: str = "it", **kw: Any):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(),
                dynamic_ncols=True, leave=False, **kw)
