"""Parsing of docker's flag values: durations, sizes, CPUs. Pure."""

from __future__ import annotations

import re

import click

__all__ = ["format_duration", "parse_cpus", "parse_duration", "parse_size"]

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)$", re.IGNORECASE)
_SIZE_MULT = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}


def parse_duration(value: str, flag: str) -> int:
    """Go's time.ParseDuration: ``5s``, ``1m30s``, ``250ms``, ``0`` -> nanoseconds."""
    text = value.strip()
    if text in ("0", "+0", "-0"):
        return 0
    sign = -1 if text.startswith("-") else 1
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_NS[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise click.BadParameter(
            f'invalid duration "{value}": use a number with a unit, like 5s, 1m30s or 250ms', param_hint=flag
        )
    return sign * round(total)


def format_duration(ns: int) -> str:
    """Go's Duration.String for the values docker prints (``5s``, ``1m30s``, ``100ms``)."""
    if ns == 0:
        return "0s"
    if ns < 10**9:
        for unit, size in (("ms", 10**6), ("µs", 10**3)):
            if ns >= size:
                return f"{ns / size:g}{unit}"
        return f"{ns}ns"
    secs = ns / 10**9
    hours, rem = divmod(secs, 3600)
    minutes, secs = divmod(rem, 60)
    out = ""
    if hours:
        out += f"{int(hours)}h"
    if hours or minutes:
        out += f"{int(minutes)}m"
    return out + f"{secs:g}s"


def parse_size(value: str, flag: str) -> int:
    """Docker's RAMInBytes: ``512M``, ``1g``, ``64MiB``, a bare number is bytes."""
    m = _SIZE.match(value.strip())
    if not m:
        raise click.BadParameter(
            f'invalid size "{value}": use a number with an optional unit, like 512M or 1G', param_hint=flag
        )
    return int(float(m.group(1)) * _SIZE_MULT[m.group(2).lower()])


def parse_cpus(value: str, flag: str) -> int:
    """CPUs as a decimal (``0.5``) -> nano CPUs."""
    try:
        cpus = float(value)
    except ValueError:
        raise click.BadParameter(
            f'invalid CPU value "{value}": use a decimal number like 0.5', param_hint=flag
        ) from None
    if cpus < 0:
        raise click.BadParameter(f'invalid CPU value "{value}": must not be negative', param_hint=flag)
    return round(cpus * 1e9)
