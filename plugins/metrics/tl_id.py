"""Metric ``tl-id``: STIT's temporally local identity consistency."""

from __future__ import annotations

import ipfacediff
from ipfacediff.plugins.metrics._bases import IdentityOverTime


class TLID(IdentityOverTime):
    """STIT's TL-ID: the mean over adjacent frames of the edited pair's identity cosine over the source pair's."""

    description = (
        "temporally local identity consistency (STIT): mean over adjacent frames of edited / source identity cosine; "
        "1.0 is ideal"
    )
    pairs = "adjacent"
    temporal = True


@ipfacediff.hookimpl
def register_metrics(register):
    register(TLID, name="tl-id")
