"""Wall-time logs: what a paper or a training script records when it has no per-iteration
trace, one row per worker per epoch or mini-epoch. `hybridps calibrate` fits from them as
from compute records (docs/fidelity.md gives the format).

CSV, a header line then rows:  worker,resolution,batch,samples,wall_s[,iterations][,device]
JSON: {"format": "hybridps.walltime/1", "rows": [{"worker": ..., "resolution": ..., ...}]}

A row says: `worker` computed `samples` samples at batch `batch` (so `iterations` =
ceil(samples / batch) unless given) in `wall_s` seconds of compute. Under the linear model
that is `a·samples + b·iterations`, i.e. the mean iteration of `samples/iterations`
samples took `wall_s/iterations`: that is the observation calibrate fits.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from hybridps.errors import UserError
from hybridps.spec import parse_json_strict

WALLTIME_FORMAT = "hybridps.walltime/1"
_REQUIRED = ("worker", "resolution", "batch", "samples", "wall_s")
_OPTIONAL = ("iterations", "device")


@dataclass(frozen=True)
class WallTimeRow:
    worker: str
    resolution: int
    batch: int
    samples: int
    wall_s: float
    iterations: int
    device: str | None
    where: str  # file:line, for reports


@dataclass(frozen=True)
class WallTimeLog:
    path: str
    rows: tuple[WallTimeRow, ...]


def is_walltime_log(path: str | Path) -> bool:
    """A .csv file, or a JSON file whose format is hybridps.walltime/1."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return True
    if p.suffix.lower() == ".json":
        try:
            with open(p, "rb") as f:
                return (json.load(f) or {}).get("format") == WALLTIME_FORMAT
        except (OSError, ValueError, AttributeError, RecursionError):
            return False  # not a wall-time log: the trace reader says what is wrong with it
    return False


def _row(raw: dict, where: str) -> WallTimeRow:
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise UserError(f"{where}: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(_REQUIRED + _OPTIONAL)}")
    missing = [k for k in _REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")

    def number(key: str, kind: type, low: float) -> float:
        value = raw[key]
        try:
            v = kind(value) if not isinstance(value, bool) else None
        except (TypeError, ValueError):
            v = None
        if v is None or not math.isfinite(v) or (kind is int and float(value) != v) or v < low:
            raise UserError(f"{where}: {key} must be a finite {'integer' if kind is int else 'number'} >= {low:g}, "
                            f"got {value!r}")
        return v

    batch = number("batch", int, 1)
    samples = number("samples", int, 1)
    iterations = number("iterations", int, 1) if raw.get("iterations") not in (None, "") else math.ceil(samples / batch)
    if not (samples / batch <= iterations <= samples):
        raise UserError(f"{where}: iterations {iterations} cannot hold {samples} samples at batch {batch}")
    wall_s = number("wall_s", float, 0)
    if wall_s <= 0:
        raise UserError(f"{where}: wall_s must be > 0, got {raw['wall_s']!r}")
    device = raw.get("device") or None
    return WallTimeRow(str(raw["worker"]), number("resolution", int, 1), batch, samples, wall_s, iterations,
                       None if device is None else str(device), where)


def _read_utf8(p: Path) -> str:
    """The file's text; UserError for one that cannot be read or is not UTF-8 (a Latin-1
    export would otherwise be misread or crash)."""
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{p}:{line}: not UTF-8 text (byte {e.start}); save the log as UTF-8") from None


def read_walltime_log(path: str | Path) -> WallTimeLog:
    """Read and check a CSV or JSON wall-time log (UserError naming file:line)."""
    p = Path(path)
    text = _read_utf8(p)
    rows: list[WallTimeRow] = []
    if p.suffix.lower() == ".csv":
        reader = csv.DictReader(line for line in text.splitlines() if line.strip() and not line.startswith("#"))
        for i, raw in enumerate(reader, start=2):
            rows.append(_row({k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}, f"{p}:{i}"))
    else:
        try:
            data = parse_json_strict(text)
        except RecursionError:
            raise UserError(f"{p}: nested too deeply to be a wall-time log") from None
        except ValueError as e:  # invalid JSON, a duplicate key, NaN or Infinity
            raise UserError(f"{p}: invalid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("format") != WALLTIME_FORMAT or not isinstance(data.get("rows"), list):
            raise UserError(f'{p}: expected {{"format": "{WALLTIME_FORMAT}", "rows": [...]}}')
        for i, raw in enumerate(data["rows"]):
            if not isinstance(raw, dict):
                raise UserError(f"{p}: rows[{i}]: expected an object")
            rows.append(_row(raw, f"{p}: rows[{i}]"))
    if not rows:
        raise UserError(f"{p}: no rows")
    return WallTimeLog(str(p), tuple(rows))
