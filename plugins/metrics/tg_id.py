"""Metric ``tg-id``: STIT's temporally global identity consistency."""

from __future__ import annotations

import ipfacediff
from ipfacediff.plugins.metrics._bases import IdentityOverTime


class TGID(IdentityOverTime):
    """STIT's TG-ID: the mean over all pairs of frames of the edited pair's identity cosine over the source pair's."""

    description = (
        "temporally global identity consistency (STIT): mean over all frame pairs of edited / source identity cosine; "
        "1.0 is ideal"
    )
    pairs = "all"


@ipfacediff.hookimpl
def register_metrics(register):
    register(TGID, name="tg-id")
