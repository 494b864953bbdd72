"""Conversions between protobuf time types and Python numbers."""

from __future__ import annotations

import time

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["duration", "now_ts", "seconds", "ts_seconds"]


def duration(secs: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(round(secs * 1e9))
    return d


def seconds(d: Duration) -> float:
    return float(d.ToNanoseconds()) / 1e9


def now_ts() -> Timestamp:
    t = Timestamp()
    t.FromNanoseconds(time.time_ns())
    return t


def ts_seconds(t: Timestamp) -> float:
    return float(t.ToNanoseconds()) / 1e9
