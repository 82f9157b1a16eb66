"""The component kinds: what a plugin implements.

Every component is a class derived from one of the ten interfaces below. It declares its
parameters once as a dataclass named ``Params`` (see :mod:`ipfacediff.params`), is constructed as
``cls(params)``, and is registered under a name through the kind's hook (see
:mod:`ipfacediff.hookspecs`).

Conventions shared by all kinds (so a third party can implement one without reading the built-ins):

* **Images** given to or returned by components are ``torch.float32`` tensors ``[B, 3, H, W]`` with
  RGB values in ``[0, 1]`` unless stated otherwise. **Frames** read from disk are ``numpy.uint8``
  arrays ``[H, W, 3]`` RGB.
* **Latents** are Stable Diffusion latents ``[B, 4, H/8, W/8]`` already multiplied by the VAE's
  scaling factor.
* **Devices**: a component is built on the CPU; ``to(device)`` moves it. Inputs are moved to the
  component's device by the component itself; outputs stay on that device.
* Components must not modify their inputs in place.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

from ipfacediff.params import NoParams


class Component(abc.ABC):  # noqa: B024 - abstract per kind, not here
    """Base of every component.

    Class attributes a component sets:

    * ``Params``: a dataclass of its parameters (defaults to no parameters).
    * ``test_params``: parameter values that make it small and fast (tiny models) for the
      conformance test and for ``--backbone tiny``-style runs.
    * ``description``: one line shown by ``ipfacediff plugins``.

    ``name``, ``kind`` and ``plugin`` are filled in at registration. A component that needs another
    component (a detector, an encoder) asks for it by name with :meth:`component`: the catalog that
    built it builds the other one (a plugin never imports another plugin nor looks up the catalog).
    """

    Params: ClassVar[type] = NoParams
    test_params: ClassVar[dict[str, Any]] = {}
    description: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    plural: ClassVar[str] = ""  # the kind's plural: its hook ``register_<plural>`` and built-in plugin folder
    name: ClassVar[str] = ""

    _build: ClassVar[Callable[..., Component] | None] = None  # set per instance by the catalog

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()
        self.device = torch.device("cpu")

    def component(self, kind: str, name: str, params: dict[str, Any] | None = None) -> Component:
        """Another registered component, built (with validated ``params``) by the catalog that built
        this one."""
        if self._build is None:
            from .errors import PluginLoadError

            raise PluginLoadError(
                f"{type(self).__name__} needs a {kind.replace('_', ' ')} ({name!r}) but was not built by a catalog; "
                f"build it with ipfacediff.get_catalog().build(...)"
            )
        return self._build(kind, name, params)

    def to(self, device: str | torch.device) -> Component:
        """Move the component's models to ``device`` and return ``self``."""
        self.device = torch.device(device)
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                value.to(self.device)
        return self

    @classmethod
    def build_for_test(cls, workdir: str) -> Component:
        """An instance for the conformance test: ``cls(Params(**test_params))`` by default.

        Override when a test instance needs files (``workdir`` is an empty temporary folder).
        """
        return cls(cls.Params(**cls.test_params))

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(self.params).items())
        return f"{type(self).__name__}<{self.kind}:{self.name}>({fields})"


# --------------------------------------------------------------------------------------- faces
@dataclass
class FaceDetection:
    """One face in one frame, in that frame's pixel coordinates.

    ``box``: ``[x0, y0, x1, y1]`` float. ``landmarks``: ``[5, 2]`` (left eye, right eye, nose tip,
    left and right mouth corner, as seen in the image) or ``None`` when the detector has none.
    ``score``: confidence in ``[0, 1]``.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray | None = None
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": None
            if self.landmarks is None
            else [[round(float(x), 2), round(float(y), 2)] for x, y in self.landmarks],
        }


@dataclass
class AlignedFace:
    """A face crop and the transform that made it. ``crop``: ``uint8 [S, S, 3]`` RGB. ``matrix``: ``[2, 3]``
    affine map from frame to crop pixel coordinates (``cv2.warpAffine`` convention); paste-back uses its inverse."""

    crop: np.ndarray
    matrix: np.ndarray
    detection: FaceDetection | None = None


class FaceProcessor(Component):
    """Detect faces, align one to a square crop, paste an edited crop back.

    ``detect(frame)`` takes an RGB ``uint8 [H, W, 3]`` frame and returns the faces found, best first
    (an empty list when there is none: never raise for "no face"). ``align`` and ``paste_back`` are
    exact inverses up to resampling: ``paste_back(frame, align(frame, d).crop, ...)`` changes no
    pixel outside the face region.
    """

    kind = "face_processor"
    plural = "face_processors"

    @abc.abstractmethod
    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        """Faces in ``frame`` (RGB uint8 HxWx3), best first; ``[]`` when none."""

    def detect_next(self, frame: np.ndarray, previous: FaceDetection | None) -> list[FaceDetection]:
        """Faces in ``frame``, the next frame of a clip whose face in the frame before was ``previous``
        (``None``: a track starts, or was lost). What tracking calls frame after frame; the default is
        :meth:`detect`. A processor may use ``previous`` to search less of the frame or to skip a costly
        confirmation of a face that continues the track (and return ``[]`` or detect afresh when it does
        not find it there)."""
        return self.detect(frame)

    @abc.abstractmethod
    def align(self, frame: np.ndarray, detection: FaceDetection, size: int = 512) -> AlignedFace:
        """The face of ``detection`` warped to a ``size`` x ``size`` crop."""

    @abc.abstractmethod
    def paste_back(self, frame: np.ndarray, crop: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """A copy of ``frame`` with ``crop`` (made by ``align`` with ``matrix``) blended back in."""


class IdentityEncoder(Component):
    """A face-identity network R: aligned crops to unit-norm embeddings (differentiable).

    ``embed(x)``: ``x`` float ``[B, 3, S, S]`` RGB in ``[0, 1]``, aligned to the ArcFace five-point
    template at ``input_size`` (other sizes are resized); returns ``[B, D]`` with unit L2 norm.
    Gradients flow from the output to ``x``.
    """

    kind = "identity_encoder"
    plural = "identity_encoders"
    input_size: int = 112
    embedding_dim: int = 0
    differentiable: bool = True  # False: it scores identity (metrics) but cannot train it (the identity loss)

    @abc.abstractmethod
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Unit-norm identity embeddings ``[B, D]`` of aligned crops ``[B, 3, S, S]`` in [0, 1]."""

    def embed_faces(self, frames: Sequence[np.ndarray], landmarks: Sequence[np.ndarray]) -> torch.Tensor | None:
        """Unit-norm embeddings ``[F, D]`` of the faces at five-point ``landmarks`` in full RGB
        ``frames``, for an encoder with an alignment of its own (what the identity metrics call first);
        ``None`` (the default): the caller crops the faces to the ArcFace template for :meth:`embed`."""
        return None


class Metric(Component):
    """A score of an edited video against its source.

    ``compute(source, edited)``: two videos of the same length as ``uint8 [T, H, W, 3]`` arrays
    (or sequences of frames). Returns a dict with at least ``"value"`` (a float, ``nan`` when the
    metric does not apply, then with a ``"note"`` saying why) and optionally ``"per_frame"``.
    ``higher_is_better`` tells report tables which end is best. ``temporal``: it scores pairs of
    consecutive frames (its ``per_frame`` has T - 1 values).
    """

    kind = "metric"
    plural = "metrics"
    higher_is_better: ClassVar[bool] = True
    temporal: ClassVar[bool] = False
    #: what the benchmark harness feeds it: ``"edit"`` (source vs edited video), ``"null-edit"``
    #: (source vs the pipeline's output with the source prompt only: reconstruction), or
    #: ``"propagation"`` (source face crops vs the crops rebuilt by propagating the keyframes'
    #: own latents: what a propagator loses, independent of any edit)
    inputs: ClassVar[str] = "edit"

    @abc.abstractmethod
    def compute(
        self, source: Sequence[np.ndarray] | np.ndarray, edited: Sequence[np.ndarray] | np.ndarray
    ) -> dict[str, Any]:
        """Score ``edited`` against ``source`` (same length, uint8 RGB frames)."""

    def compute_with_context(
        self,
        source: Sequence[np.ndarray] | np.ndarray,
        edited: Sequence[np.ndarray] | np.ndarray,
        context: dict[str, Any],
    ) -> dict[str, Any]:
        """What the harness calls; ``context`` holds ``target_prompt``, ``source_prompt``, ``fps``.
        Metrics that need the prompts (CLIP scores) override this; the default ignores it."""
        return self.compute(source, edited)


# ----------------------------------------------------------------------------------- diffusion
class Backbone(Component):
    """A latent text-to-image diffusion model (UNet, VAE, text encoder, tokenizer, scheduler).

    ``encode_images``: ``[B, 3, H, W]`` in [0, 1] -> latents ``[B, 4, H/8, W/8]`` (scaled).
    ``decode_latents``: the inverse, output in [0, 1] (``grad=True``: differentiable with respect
    to the latents, for losses on decoded images in fine-tuning). ``encode_prompt``: a list of B prompts ->
    text embeddings ``[B, L, D]``. ``unet`` is a diffusers ``UNet2DConditionModel``;
    ``scheduler_config`` a DDIM-compatible scheduler config. ``set_adapter(name)`` switches the
    active LoRA adapter (``None``: the base model). ``resolution`` is the working image size.

    Every UNet call goes through :meth:`predict_noise`, which counts evaluations (one per latent
    in the batch) by stage in ``unet_evals`` for the edit report.
    """

    kind = "backbone"
    plural = "backbones"
    unet: Any = None
    vae: Any = None
    scheduler_config: Any = None
    resolution: int = 512
    is_random: bool = False  # True for randomly initialised test backbones

    def __init__(self, params: Any | None = None) -> None:
        super().__init__(params)
        self.unet_evals: dict[str, int] = {}
        self.active_adapter: str | None = None

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode_latents(self, latents: torch.Tensor, grad: bool = False) -> torch.Tensor: ...

    @abc.abstractmethod
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor: ...

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded LoRA adapters."""
        return []

    def set_adapter(self, name: str | None) -> None:
        """Activate the LoRA adapter ``name``; ``None`` or an adapter that is not loaded: the base model."""
        self.active_adapter = None

    def predict_noise(
        self, latents: torch.Tensor, t: torch.Tensor | int, prompt_embeds: torch.Tensor, stage: str
    ) -> torch.Tensor:
        """The UNet's noise prediction, counted under ``stage``. ``prompt_embeds`` is broadcast
        when it has one row."""
        if prompt_embeds.shape[0] == 1 and latents.shape[0] > 1:
            prompt_embeds = prompt_embeds.expand(latents.shape[0], -1, -1)
        self.unet_evals[stage] = self.unet_evals.get(stage, 0) + int(latents.shape[0])
        dtype = next(self.unet.parameters()).dtype
        with torch.no_grad():
            out = self.unet(
                latents.to(self.device, dtype), t, encoder_hidden_states=prompt_embeds.to(self.device, dtype)
            ).sample
        return out.to(torch.float32)

    def identity(self) -> dict[str, Any]:
        """What identifies the weights (for caches and reports)."""
        return {"name": self.name, "params": dataclasses.asdict(self.params)}


@dataclass
class Inversion:
    """The result of inverting clean latents ``x0`` ``[T, 4, h, w]``.

    ``timesteps``: the noise levels reached, ascending; ``trajectory[0]`` is ``x0`` and
    ``trajectory[i + 1]`` the latents at ``timesteps[i]`` (for SDEdit-style noising only the last
    level is there). ``denoise_timesteps``: the descending timesteps an editor runs, starting from
    ``trajectory[-1]``. ``steps``: the sampler's step count (``scheduler.set_timesteps(steps)``) those
    timesteps belong to. ``extras``: inverter-specific facts for the report.
    """

    timesteps: list[int]
    trajectory: list[torch.Tensor]
    denoise_timesteps: list[int]
    steps: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    start: torch.Tensor | None = None

    @property
    def start_latent(self) -> torch.Tensor:
        """The latents the sampler starts from."""
        return self.trajectory[-1] if self.start is None else self.start

    def latent_at(self, t: int) -> torch.Tensor | None:
        """The inverted latents at noise level ``t`` (``None`` when the trajectory lacks it)."""
        t = int(t)
        if t in self.timesteps:
            return self.trajectory[self.timesteps.index(t) + 1]
        return None

    def select(self, rows: Sequence[int]) -> Inversion:
        """The same inversion restricted to some frames."""
        rows = list(rows)
        return Inversion(
            list(self.timesteps),
            [x[rows] for x in self.trajectory],
            list(self.denoise_timesteps),
            self.steps,
            dict(self.extras),
            None if self.start is None else self.start[rows],
        )


class Inverter(Component):
    """Map clean latents to noisy latents along a sampler's trajectory (e.g. DDIM inversion).

    ``invert(backbone, latents, prompt_embeds, steps)``: ``latents [T, 4, h, w]``,
    ``prompt_embeds [1 or T, L, D]``, ``steps`` sampler steps; returns an :class:`Inversion`. UNet
    calls go through ``backbone.predict_noise(..., stage="inversion")``. ``seed`` makes any
    randomness reproducible. An inverter is a pure function of its inputs: the edit job caches
    inversions (keyed by the latents, prompt, backbone, adapter, steps and the inverter's parameters).
    """

    kind = "inverter"
    plural = "inverters"

    @abc.abstractmethod
    def invert(
        self, backbone: Backbone, latents: torch.Tensor, prompt_embeds: torch.Tensor, steps: int, seed: int = 0
    ) -> Inversion: ...


class Editor(Component):
    """Denoise inverted keyframe latents under a target prompt.

    ``edit(backbone, inversion, prompt_embeds, uncond_embeds, source_embeds)``: ``inversion`` holds
    the K frames to edit (edited jointly when the editor supports it); ``prompt_embeds`` the target
    prompt ``[1, L, D]``, ``uncond_embeds`` the unconditional / negative prompt for classifier-free
    guidance, ``source_embeds`` the prompt eps1 sees (empty). Returns edited clean latents
    ``[K, 4, h, w]``. UNet calls go through ``backbone.predict_noise`` (stages ``feature`` and
    ``keyframe-edit``). ``guidance_scale``: its classifier-free guidance scale (refinement uses it too).
    ``check(backbone)``: called by every edit, cached or not: warn (``EditWarning``) of what will not run as asked.
    """

    kind = "editor"
    plural = "editors"
    guidance_scale: float = 7.5

    def check(self, backbone: Backbone) -> None: ...

    @abc.abstractmethod
    def edit(
        self,
        backbone: Backbone,
        inversion: Inversion,
        prompt_embeds: torch.Tensor,
        uncond_embeds: torch.Tensor,
        source_embeds: torch.Tensor,
    ) -> torch.Tensor: ...


@dataclass
class PropagationInput:
    """What a propagator gets for one run of consecutive face frames (a chunk) plus the keyframes on
    both sides of it. Rows are face frames; ``key_rows`` are the keyframes' positions among them.

    * ``frames``: the clip frame index of each row (for temporal weights; not evenly spaced).
    * ``features``: ``[T, C, h, w]`` source features to find correspondences on (the unedited
      frames' latents, or eps1's decoder features), when the strategy has them.
    * ``stats``: per-channel ``(mean, std)`` ``[C]`` of ``features`` over all of the clip's keyframes.
      Edits stream long clips chunk by chunk; a propagator that normalises features uses these (not
      the chunk's own) so chunked and whole-clip propagation agree.
    * ``source_latents``: ``[T, 4, h, w]`` latents of the unedited frames.
    * ``source_pixels``: ``uint8 [T, S, S, 3]`` the unedited aligned crops.
    * ``edited_latents``: ``[K, 4, h, w]`` the edited keyframes' latents (K = ``len(key_rows)``).
    * ``edited_pixels``: ``uint8 [K, S, S, 3]`` the edited keyframes' pixels.
    * ``reconstructed_pixels``: ``uint8 [K, S, S, 3]`` the unedited keyframes as the VAE gives them
      back (a pixel-space propagator carries ``edited - reconstructed``, not the VAE's own error).
    * ``faces``: per row, the tracked face (or ``None``) in ``source_pixels`` coordinates.

    A field a propagator needs (:attr:`Propagator.needs`) is always set; the others may be ``None``.
    """

    key_rows: list[int]
    frames: list[int]
    features: torch.Tensor | None = None
    stats: tuple[torch.Tensor, torch.Tensor] | None = None
    source_latents: torch.Tensor | None = None
    source_pixels: np.ndarray | None = None
    edited_latents: torch.Tensor | None = None
    edited_pixels: np.ndarray | None = None
    reconstructed_pixels: np.ndarray | None = None
    faces: list[FaceDetection | None] | None = None


class Propagator(Component):
    """Carry an edit from keyframes to every frame.

    ``propagate(inp)`` takes a :class:`PropagationInput` and returns the edited rows in the
    propagator's ``space``: ``"latents"`` -> ``torch.Tensor [T, 4, h, w]``, ``"pixels"`` ->
    ``uint8 [T, S, S, 3]``. Rows at ``key_rows`` equal the edited keyframes. ``needs`` names the
    input fields it reads (the strategy fills at least those). It is called once per chunk: its
    result for a row depends only on that row and the keyframes on both sides (plus ``stats``), so
    chunked propagation equals whole-clip propagation. ``landmark_model``: the landmark model it follows.
    """

    kind = "propagator"
    plural = "propagators"
    space: ClassVar[Literal["latents", "pixels"]] = "latents"
    needs: ClassVar[tuple[str, ...]] = ("features", "edited_latents")
    landmark_model: ClassVar[str | None] = None

    @abc.abstractmethod
    def propagate(self, inp: PropagationInput) -> torch.Tensor | np.ndarray: ...


class LocalizationLoss(Component):
    """A differentiable loss steering an edit (e.g. directional CLIP).

    ``forward(generated, reference, target_prompts, reference_prompts)``: images ``[B, 3, H, W]`` in
    [0, 1] and B prompts each; returns a scalar tensor (lower is better) with gradients to
    ``generated``.
    """

    kind = "localization_loss"
    plural = "localization_losses"

    @abc.abstractmethod
    def forward(
        self,
        generated: torch.Tensor,
        reference: torch.Tensor,
        target_prompts: Sequence[str],
        reference_prompts: Sequence[str],
    ) -> torch.Tensor: ...


# -------------------------------------------------------------------------------- edit methods
class EditRun(abc.ABC):
    """The edit as one object, as a :class:`Strategy` sees it: the clip's source latents and
    keyframes, the built components, and the run's services (cached inversion, cached stages, timing,
    the report). The edit job (``ipfacediff.jobs.edit.EditJob``) is one; so is the small in-memory run
    of the conformance checks, and the ComfyUI nodes build one from IMAGE tensors.

    * ``latents``: ``float32 [F, 4, h, w]`` source latents of every face frame ("row"), encoded on first
      read (read only the rows you need); ``face_frames[row]``: its clip frame; ``keys``: keyframe rows.
    * ``components``: the pipeline's built components by slot (``inverter``, ``editor``,
      ``propagator``, ...); ``settings``: the pipeline settings (``ipfacediff.registry.PipelineSettings``).
    * ``embeds``: prompt embeddings ``"target"``, ``"uncond"`` (guidance) and ``"empty"`` (eps1).
    * ``report``: facts for the edit report; ``reused``: names of stages loaded from the cache.
    * ``scratch``: a private folder for temporary files, removed when the edit ends.
    """

    backbone: Backbone
    components: dict[str, Component]
    settings: Any
    latents: np.ndarray
    keys: list[int]
    face_frames: list[int]
    embeds: dict[str, torch.Tensor]
    steps: int
    seed: int
    show_progress: bool
    scratch: Path
    report: dict[str, Any]
    reused: list[str]

    def rows(self, rows: Sequence[int]) -> torch.Tensor:
        """Source latents of ``rows`` as a float tensor."""
        return torch.from_numpy(np.ascontiguousarray(self.latents[list(rows)]))

    @abc.abstractmethod
    def crops(self, rows: Sequence[int]) -> np.ndarray:
        """The unedited aligned face crops of ``rows``, ``uint8 [n, r, r, 3]`` at the backbone's
        resolution (read and aligned on demand, for pixel-space propagation)."""

    @abc.abstractmethod
    def invert(self, latents: torch.Tensor) -> Inversion:
        """eps1's (the identity adapter's) inversion of ``latents`` by the pipeline's inverter, cached
        by the run, timed under ``invert``."""

    @abc.abstractmethod
    def cached(self, category: str, parts: dict[str, Any], compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A tensor stage result kept in the run's stage cache under a key made of ``parts`` and the
        backbone, adapters, steps and seed; ``compute()`` runs on a miss."""

    @abc.abstractmethod
    def timer(self, name: str) -> AbstractContextManager[None]:
        """A context manager adding the block's wall time to the report's ``timings_s[name]``."""


class Strategy(Component):
    """An edit method: which frames are inverted, edited, propagated.

    The edit job calls :meth:`prepare` once (the clip-wide stage, e.g. invert and edit the
    keyframes), then :meth:`render` for each chunk of consecutive face rows (bounded memory: a chunk
    is ``settings.chunk_frames`` frames), then :meth:`close`. ``render`` returns the edited latents
    ``[len(rows), 4, h, w]`` of those rows (the job decodes them) or their edited crops
    ``uint8 [len(rows), r, r, 3]`` (no VAE); the job pastes them back and writes the video.
    ``requires``: the pipeline slots it needs, checked when the registry file loads.
    ``adaptive_keyframes``: True when :meth:`prepare` honours ``settings.keyframes: adaptive`` (adds
    keyframes where its self-check falls below ``settings.keyframe_threshold``, setting ``run.keys``);
    the edit job refuses the setting for a strategy that does not.
    """

    kind = "strategy"
    plural = "strategies"
    requires: ClassVar[tuple[str, ...]] = ("face_processor", "inverter")
    adaptive_keyframes: ClassVar[bool] = False

    def prepare(self, run: EditRun) -> None:
        """The clip-wide stage (default: nothing)."""

    @abc.abstractmethod
    def render(self, run: EditRun, rows: list[int]) -> torch.Tensor | np.ndarray:
        """Edited latents (or crops) of the consecutive face rows ``rows``."""

    def close(self) -> None:
        """Release what :meth:`prepare` kept (default: nothing)."""


# ------------------------------------------------------------------------------- fine-tuning
@dataclass
class TrainingBatch:
    """One batch of the fine-tuning job: rows into the prepared faces, timesteps, noise, and the
    objective's prompts (``(text, face part)`` pairs, see :attr:`Objective.prompts`)."""

    idx: torch.Tensor
    t: torch.Tensor
    noise: torch.Tensor
    prompts: list[tuple[str, str]]


class Objective(Component):
    """A fine-tuning objective: the loss terms a LoRA adapter is trained with.

    The fine-tuning job prepares faces (``faces``: a ``ipfacediff.runtime.training.TrainingFaces``
    with their latents, VAE round trips, landmarks and reference identity embeddings), calls
    :meth:`setup` once, then :meth:`losses` on each batch: a dict of term name -> scalar tensor
    (differentiable through ``unet``'s LoRA weights). ``terms``: the term names it can compute,
    ``default_weights``: the weights a recipe starts from (``settings.loss_weights`` overrides),
    ``requires``: the recipe slots it needs (checked when the registry loads; ``term_requires`` per
    term, checked when the term's weight is > 0), ``prompts``: the ``(text, part)`` pairs batches
    draw from.
    """

    kind = "objective"
    plural = "objectives"
    requires: ClassVar[tuple[str, ...]] = ("face_processor",)
    term_requires: ClassVar[dict[str, str]] = {}
    terms: ClassVar[tuple[str, ...]] = ()
    default_weights: ClassVar[dict[str, float]] = {}
    prompts: list[tuple[str, str]] = [("", "all")]

    def setup(
        self,
        backbone: Backbone,
        faces: Any,
        components: dict[str, Component],
        settings: Any,
        weights: dict[str, float],
    ) -> None:
        """Once before training (default: keep the arguments as attributes)."""
        self.backbone, self.faces, self.components, self.settings, self.weights = (
            backbone,
            faces,
            components,
            settings,
            weights,
        )

    @abc.abstractmethod
    def losses(self, unet: Any, batch: TrainingBatch) -> dict[str, torch.Tensor]:
        """The loss terms of ``batch`` (only those with a weight > 0 are needed)."""


# The one declaration of the kinds: every table of kinds is derived from it (the hookspecs' names,
# the catalog's hooks, the built-in plugin folders, the conformance checks' index).
INTERFACES: dict[str, type[Component]] = {
    cls.kind: cls
    for cls in (
        Backbone,
        IdentityEncoder,
        LocalizationLoss,
        Inverter,
        Editor,
        Propagator,
        FaceProcessor,
        Metric,
        Strategy,
        Objective,
    )
}
"""Kind name -> its interface."""

KINDS: dict[str, str] = {kind: cls.plural for kind, cls in INTERFACES.items()}
"""Kind name -> plural used in hook names (``register_<plural>``) and built-in plugin folders."""
