"""Metric ``tl-id``: STIT's temporally local identity consistency."""

from __future__ import annotations

import ipfacediff
from ipfacediff.plugins.metrics._bases import IdentityOverTime


class TLID(IdentityOverTime):
    """STIT's TL-ID: identity similarity of adjacent edited frames over that of the source (1.0 ideal)."""

    description = (
        "temporally local identity consistency (STIT): adjacent-frame identity cosine, edited / source; 1.0 is ideal"
    )
    pairs = "adjacent"
    temporal = True


@ipfacediff.hookimpl
def register_metrics(register):
    register(TLID, name="tl-id")
