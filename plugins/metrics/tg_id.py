"""Metric ``tg-id``: STIT's temporally global identity consistency."""

from __future__ import annotations

import ipfacediff
from ipfacediff.plugins.metrics._bases import IdentityOverTime


class TGID(IdentityOverTime):
    """STIT's TG-ID: identity similarity over all pairs of edited frames over that of the source."""

    description = (
        "temporally global identity consistency (STIT): all-pairs identity cosine, edited / source; 1.0 is ideal"
    )
    pairs = "all"


@ipfacediff.hookimpl
def register_metrics(register):
    register(TGID, name="tg-id")
