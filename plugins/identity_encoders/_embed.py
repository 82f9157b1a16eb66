"""What the identity encoders of this folder share (a helper, not a plugin): the embedding of aligned
crops by a recognition network at 112 px, optionally averaged with the mirrored crop's."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ipfacediff.interfaces import IdentityEncoder


class CropEncoder(IdentityEncoder):
    """``embed``: crops resized to 112 px, normalised as the network was trained (:meth:`normalise`),
    through ``self.net`` (plus the mirrored crop when ``params.flip``), unit norm."""

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, 112, 112]`` in [0, 1] -> the network's input range."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32)
        if x.shape[-2:] != (112, 112):
            x = F.interpolate(x, size=(112, 112), mode="bilinear", align_corners=False, antialias=True)
        x = self.normalise(x)
        f = self.net(x)
        if self.params.flip:
            f = f + self.net(torch.flip(x, dims=[3]))
        return F.normalize(f, dim=-1)
