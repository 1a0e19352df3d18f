"""Trace records (hybridps.trace/1): one schema for the simulator, the runtime and the
profiler, so any two traces can be compared. Never imports torch."""

from traces.records import RECORD_KINDS, TRACE_FORMAT, validate_record
from traces.jsonl import Trace, TraceWriter, read_trace
from traces.chrome import to_chrome, write_chrome

__all__ = ["RECORD_KINDS", "TRACE_FORMAT", "validate_record", "Trace", "TraceWriter", "read_trace",
           "to_chrome", "write_chrome"]
