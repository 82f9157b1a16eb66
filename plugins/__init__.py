"""Built-in plugins. Each module registers its components through the same hooks a third-party
package uses (:mod:`ipfacediff.hookspecs`)."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "ipfacediff.plugins.retinaface",
    "ipfacediff.plugins.mtcnn",
    "ipfacediff.plugins.full_frame",
    "ipfacediff.plugins.mobilefacenet",
    "ipfacediff.plugins.insightface_arcface",
    "ipfacediff.plugins.metrics",
    "ipfacediff.plugins.backbones",
    "ipfacediff.plugins.inverters",
    "ipfacediff.plugins.editors",
    "ipfacediff.plugins.propagators",
    "ipfacediff.plugins.clip_directional",
    "ipfacediff.plugins.video_metrics",
)
