"""The plugin hooks: one ``register_<kind>s(register)`` hook per component kind.

A plugin is a module (or object) with functions decorated by ``@ipfacediff.hookimpl`` whose names
are the hooks below. Each hook receives a ``register`` callable; call it once per component class:

.. code-block:: python

    import ipfacediff
    from ipfacediff.interfaces import Metric

    class MeanAbsDiff(Metric):
        description = "mean absolute pixel difference"
        higher_is_better = False
        def compute(self, source, edited):
            ...

    @ipfacediff.hookimpl
    def register_metrics(register):
        register(MeanAbsDiff, name="mean-abs-diff")

``register(cls, name=None)``: ``cls`` must derive from the kind's interface in
:mod:`ipfacediff.interfaces`; ``name`` defaults to ``cls.name``. Names are unique within a kind:
a second plugin registering the same name is an error that names both plugins.

The hooks' names follow from the kinds (``register_`` + ``ipfacediff.interfaces.KINDS[kind]``); a
meta-test checks that each kind has its hook here.
"""

from __future__ import annotations

from typing import Protocol

import pluggy

hookspec = pluggy.HookspecMarker("ipfacediff")
hookimpl = pluggy.HookimplMarker("ipfacediff")


class Register(Protocol):
    """The ``register`` callable passed to every hook."""

    def __call__(self, cls: type, name: str | None = None) -> None: ...


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbone components (:class:`ipfacediff.interfaces.Backbone`).

    A backbone wraps a latent diffusion model: UNet, VAE, text encoder, tokenizer, scheduler.

    :param register: call ``register(BackboneClass, name="...")`` for each backbone.

    Example: ``@hookimpl def register_backbones(register): register(MyBackbone, name="my-sd")``
    """


@hookspec
def register_identity_encoders(register: Register) -> None:
    """Register identity encoders (:class:`ipfacediff.interfaces.IdentityEncoder`).

    An identity encoder maps aligned face crops ``[B, 3, 112, 112]`` in [0, 1] to unit-norm
    embeddings ``[B, D]``, differentiably (used by the identity loss and the identity metrics).

    :param register: call ``register(EncoderClass, name="...")`` for each encoder.

    Example: ``@hookimpl def register_identity_encoders(register): register(MyArcFace, name="my-arcface")``
    """


@hookspec
def register_localization_losses(register: Register) -> None:
    """Register localization losses (:class:`ipfacediff.interfaces.LocalizationLoss`).

    A localization loss scores generated images against reference images and prompts (e.g. the
    directional CLIP loss used to fine-tune the edit adapter).

    :param register: call ``register(LossClass, name="...")`` for each loss.

    Example: ``@hookimpl def register_localization_losses(register): register(MyClipLoss, name="my-clip")``
    """


@hookspec
def register_inverters(register: Register) -> None:
    """Register inverters (:class:`ipfacediff.interfaces.Inverter`).

    An inverter maps clean frame latents to noisy latents along a sampler trajectory.

    :param register: call ``register(InverterClass, name="...")`` for each inverter.

    Example: ``@hookimpl def register_inverters(register): register(MyInversion, name="my-inversion")``
    """


@hookspec
def register_editors(register: Register) -> None:
    """Register editors (:class:`ipfacediff.interfaces.Editor`).

    An editor denoises inverted keyframe latents under a target prompt.

    :param register: call ``register(EditorClass, name="...")`` for each editor.

    Example: ``@hookimpl def register_editors(register): register(MyEditor, name="my-editor")``
    """


@hookspec
def register_propagators(register: Register) -> None:
    """Register propagators (:class:`ipfacediff.interfaces.Propagator`).

    A propagator carries edited keyframe values to every frame through correspondences found in
    source features.

    :param register: call ``register(PropagatorClass, name="...")`` for each propagator.

    Example: ``@hookimpl def register_propagators(register): register(NearestKeyframe, name="nearest-keyframe")``
    """


@hookspec
def register_face_processors(register: Register) -> None:
    """Register face processors (:class:`ipfacediff.interfaces.FaceProcessor`).

    A face processor detects faces, aligns one to a square crop and pastes an edited crop back.

    :param register: call ``register(ProcessorClass, name="...")`` for each processor.

    Example: ``@hookimpl def register_face_processors(register): register(MyDetector, name="my-detector")``
    """


@hookspec
def register_metrics(register: Register) -> None:
    """Register metrics (:class:`ipfacediff.interfaces.Metric`).

    A metric scores an edited video against its source (identity, edit strength, temporal
    consistency, fidelity).

    :param register: call ``register(MetricClass, name="...")`` for each metric.

    Example: ``@hookimpl def register_metrics(register): register(MeanAbsDiff, name="mean-abs-diff")``
    """


@hookspec
def register_strategies(register: Register) -> None:
    """Register edit strategies (:class:`ipfacediff.interfaces.Strategy`).

    A strategy is an edit method: which frames are inverted, edited and propagated. A pipeline names
    it in its ``strategy`` slot; it declares the other slots it requires.

    :param register: call ``register(StrategyClass, name="...")`` for each strategy.

    Example: ``@hookimpl def register_strategies(register): register(EveryOtherFrame, name="every-other-frame")``
    """


@hookspec
def register_objectives(register: Register) -> None:
    """Register fine-tuning objectives (:class:`ipfacediff.interfaces.Objective`).

    An objective computes the loss terms a LoRA adapter is trained with; a recipe names it in its
    ``objective`` slot.

    :param register: call ``register(ObjectiveClass, name="...")`` for each objective.

    Example: ``@hookimpl def register_objectives(register): register(SharpnessObjective, name="sharpness")``
    """
