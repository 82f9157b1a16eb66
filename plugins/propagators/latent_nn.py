"""Propagator ``latent-nn``: nearest-token propagation with one hnswlib index per keyframe (the
paper's latent nearest-neighbour search)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

import ipfacediff
from ipfacediff.runtime.tokens import NearestTokenPropagator


class LatentNN(NearestTokenPropagator):
    """Approximate nearest neighbours with one hnswlib index per keyframe."""

    description = "nearest-neighbour token propagation from the two nearest keyframes with hnswlib indexes"

    @dataclass
    class Params(NearestTokenPropagator.Params):
        ef: int = field(default=64, metadata={"range": (1, 4096), "help": "hnswlib query breadth (recall vs time)"})
        m: int = field(default=16, metadata={"range": (2, 128), "help": "hnswlib graph degree"})
        threads: int = field(default=1, metadata={"range": (1, 256)})

    def _prepare(self, feats: torch.Tensor, keys: list[int]) -> None:
        import hnswlib

        self._indexes = []
        for k in keys:
            data = feats[k].numpy()
            index = hnswlib.Index(space="l2", dim=data.shape[1])
            index.init_index(
                max_elements=len(data), ef_construction=max(100, self.params.ef), M=self.params.m, random_seed=0
            )
            index.set_num_threads(self.params.threads)
            index.add_items(data, list(range(len(data))))
            index.set_ef(self.params.ef)
            self._indexes.append(index)

    def match(self, feats: torch.Tensor, key_row: int) -> torch.Tensor:
        labels, _ = self._indexes[key_row].knn_query(feats.numpy(), k=1)
        return torch.from_numpy(labels[:, 0].astype("int64"))


@ipfacediff.hookimpl
def register_propagators(register):
    register(LatentNN, name="latent-nn")
