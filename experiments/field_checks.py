"""Checks of single config fields, shared by the general glue and the systems' hooks: each error
names ``config.<section>.<field>`` and what it accepts."""
from __future__ import annotations

import numbers


def is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def choice(field: str, value, allowed):
    """Refuse ``value`` of config field ``field`` unless it is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"config field {field}={value!r} is not one of {sorted(map(str, allowed))}")
