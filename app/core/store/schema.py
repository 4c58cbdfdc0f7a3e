"""The store's tables, as SQLAlchemy 2.0 typed models.

Natural keys match the URLs: a model by name, a layer by (model, name), a
unit by (layer, index). Images live in the blob store; rows hold only their
content keys. Every artifact, example and edge names the run that made it,
and every run records its recipe, so any image can be reproduced.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

#: Bumped whenever a table changes; a store written by a newer version is refused. Version 2
#: added the probe tables, version 3 the layers' ``field_offset`` (a store of version 1 or 2 is
#: upgraded in place when opened for writing; the catalog stage fills the new column), version 4
#: renamed the BVLC GoogLeNet from ``inceptionv1`` to ``inceptionv1_caffe`` (issue 19: ``inceptionv1``
#: is OpenAI Microscope's network, TensorFlow's inception5h), version 5 gave probes a random
#: ``public_id`` for their URLs (issue 20: a URL made of the image's digest can be derived from the image),
#: version 6 added the units' concept labels (``unit_labels``) and the layers' own renders (``layer_artifacts``:
#: DeepDream), version 7 the units' tuning curves (``unit_tuning``), version 8 the derived layers' factorizations
#: (``factorizations``, ``direction_weights``, ``unit_mixtures``) and the modules of layer pairs (``layer_modules``) and
#: the units' nearest units in other models (``unit_matches``: issue 22), version 9 the probes' neuron groups
#: (``probe_groups``) and the pictures rendered for a probe on demand (``probe_renders``), version 10 the probes'
#: attribution maps (``probe_attributions``), the models' randomization tests of those maps (``attribution_checks``),
#: ablations over the dataset (``ablations``), a probe's classes with each layer's top units ablated (``probe_ablations``) and its units'
#: contributors in the layer before (``probe_units.contributions``: issue 23), version 11 replaced
#: ``attribution_checks`` by ``sanity_steps`` (issue 30: per target kind and Grad-CAM layer, degenerate maps counted,
#: four figures with bootstrap intervals; the old table's figures scored constant maps as decorrelated, so an upgrade
#: drops it and the next `precompute sanity` measures again), labels' p and q, matches' position-wise correlations,
#: modules' z, control and verdict, and the whole network's modules (``network_modules``), version 12 the models'
#: input channels and what each stage leaves out of a model or layer, in one line (``models.channels``,
#: ``models.skips``, ``layers.skips``: issue 31; the catalog stage fills them).
SCHEMA_VERSION = 12
#: Versions a writable open upgrades by creating the tables and nullable columns added since.
ADDITIVE_SINCE = 1


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Model(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(256))
    description: Mapped[str] = mapped_column(String(1024))
    input_size: Mapped[int]
    #: Digest of the pinned checksum list of the weights the store was made from.
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    #: Input channels (1 grayscale, 3 RGB, others arrays); None in a store made before version 12.
    channels: Mapped[int | None]
    #: Stage → why the network gets none of it (`app.core.zoo.skips.model_skips`); None before version 12.
    skips: Mapped[dict[str, Any] | None]

    layers: Mapped[list[Layer]] = relationship(back_populates="model", order_by="Layer.position")


class Layer(Base):
    __tablename__ = "layers"
    __table_args__ = (UniqueConstraint("model_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    name: Mapped[str] = mapped_column(String(64))
    #: Order in the network, from the input.
    position: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))
    channels: Mapped[int]
    size: Mapped[int]
    stride: Mapped[int]
    receptive_field: Mapped[int]
    #: Input pixel at the centre of position (0, 0): with stride and receptive field, what pages
    #: need to box a position (None in a store upgraded from version 2 until the catalog reruns).
    offset: Mapped[int | None] = mapped_column("field_offset")
    inputs: Mapped[list[Any]]
    previous: Mapped[str | None] = mapped_column(String(64))
    block: Mapped[str | None] = mapped_column(String(64))
    #: Stage → why it leaves this layer out (`app.core.zoo.skips.layer_skips`); None before version 12.
    skips: Mapped[dict[str, Any] | None]

    model: Mapped[Model] = relationship(back_populates="layers")


class Unit(Base):
    __tablename__ = "units"
    __table_args__ = (UniqueConstraint("layer_id", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    index: Mapped[int]
    #: Human label: the class name of a logit unit.
    label: Mapped[str | None] = mapped_column(String(256), index=True)


class Run(Base):
    """One invocation of a precompute stage and the recipe it followed."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    stage: Mapped[str] = mapped_column(String(32))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    code_version: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    params: Mapped[dict[str, Any]]
    seed: Mapped[int | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]


class _Render:
    """What every rendered image's row holds: its technique, blob, recipe (and digest), objective and run."""

    technique: Mapped[str] = mapped_column(String(32))
    blob_key: Mapped[str] = mapped_column(String(80))
    #: Digest of the recipe: a rerun with the same recipe skips the image.
    recipe_sha256: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]]
    objective: Mapped[float | None]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class Artifact(_Render, Base):
    """A rendered image of one unit by one technique (feature visualization)."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("unit_id", "technique"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))


class LayerArtifact(_Render, Base):
    """A rendered image of a whole layer (``deep_dream``: its mean squared activation, Microscope's DeepDream)."""

    __tablename__ = "layer_artifacts"
    __table_args__ = (UniqueConstraint("layer_id", "technique"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))


class Dataset(Base):
    """An image folder the examples stage ran over; its images are never copied."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    #: Absolute root the images were read from (where the originals live).
    root: Mapped[str] = mapped_column(String(1024))
    #: Digest of the sorted relative paths and sizes: the same files give the same digest.
    fingerprint: Mapped[str] = mapped_column(String(64))
    images: Mapped[int]


class DatasetImage(Base):
    """An image of a dataset, by its path under the dataset's root."""

    __tablename__ = "dataset_images"
    __table_args__ = (UniqueConstraint("dataset_id", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    thumbnail_key: Mapped[str | None] = mapped_column(String(80))


class DatasetExample(Base):
    """One of a unit's top (or bottom) dataset images, with where in it the unit fired."""

    __tablename__ = "dataset_examples"
    __table_args__ = (UniqueConstraint("unit_id", "kind", "rank"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    #: "top" (largest activation) or "bottom" (most negative pre-ReLU activation).
    kind: Mapped[str] = mapped_column(String(8))
    rank: Mapped[int]
    image_id: Mapped[int] = mapped_column(ForeignKey("dataset_images.id"))
    activation: Mapped[float]
    y: Mapped[int]
    x: Mapped[int]
    crop_key: Mapped[str] = mapped_column(String(80))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class UnitStats(Base):
    """How a unit responds over a dataset: a coarse histogram of its per-image maximum."""

    __tablename__ = "unit_stats"

    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"), primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    images: Mapped[int]
    #: Mean over images of the unit's maximum pre-ReLU activation over positions.
    mean_max: Mapped[float]
    #: Fraction of images where the unit fires (its maximum is above zero).
    active_fraction: Mapped[float]
    #: Counts of the per-image maximum in the bins of ``histogram_edges`` (run params).
    histogram: Mapped[list[Any]]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class Edge(Base):
    """A circuit weight from a unit of one layer to a unit of the next."""

    __tablename__ = "edges"
    __table_args__ = (
        UniqueConstraint("source_id", "target_id"),
        Index("ix_edges_target", "target_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    target_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    #: "direct" (one convolution) or "expanded" (composed across a block).
    kind: Mapped[str] = mapped_column(String(16))
    #: The kernel's summed weight (sign and strength of the connection).
    weight: Mapped[float]
    norm: Mapped[float]
    #: The small spatial kernel, rows of numbers.
    kernel: Mapped[list[Any]]
    kernel_key: Mapped[str | None] = mapped_column(String(80))
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class UnitLabel(Base):
    """One of a unit's concept labels (`app.core.zoo.concepts`): a class or WordNet ancestor its top examples share.

    A unit labelled by a run and given no row has no clear concept; the run's recipe says which layer it covered.
    """

    __tablename__ = "unit_labels"
    __table_args__ = (UniqueConstraint("unit_id", "rank"), Index("ix_unit_labels_concept", "concept"))

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    rank: Mapped[int]
    #: The WordNet synset (``n02084071``) and its name (``dog``).
    concept: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128))
    #: ``count`` of the ``of`` top examples with a known class fall under it.
    count: Mapped[int]
    of: Mapped[int]
    coverage: Mapped[float]
    base_rate: Mapped[float]
    lift: Mapped[float]
    score: Mapped[float]
    #: The permutation p-value and its Benjamini-Hochberg adjustment across the layer (`app.core.zoo.concepts`); None in
    #: rows made before labels had a null (the labels stage makes them again).
    p: Mapped[float | None]
    q: Mapped[float | None]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


def new_probe_id() -> str:
    """A probe's id in URLs: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


class Probe(Base):
    """A user's image run through a model once: its top classes (its units are `ProbeUnit` rows).

    Probes are the users' data, not the model's: ``microscope gc
    --probes-older-than DAYS`` removes them with their images.
    """

    __tablename__ = "probes"
    __table_args__ = (UniqueConstraint("model_id", "sha256"), Index("ix_probes_public_id", "public_id", unique=True),
                      Index("ix_probes_image_key", "image_key"))

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    #: SHA256 of the uploaded bytes: how a second upload of the same image finds this probe.
    sha256: Mapped[str] = mapped_column(String(64))
    #: The probe's id in URLs: random (``secrets.token_urlsafe``), so nobody finds a probe from its image.
    #: Nullable only for the additive upgrade, which fills it for the probes stored before version 5.
    public_id: Mapped[str | None] = mapped_column(String(32))
    #: What the network saw: the centred square of the upload, resized to the input size.
    image_key: Mapped[str] = mapped_column(String(80))
    width: Mapped[int]
    height: Mapped[int]
    #: Top classes, best first: ``[{"index", "label", "probability", "logit"}]``.
    classes: Mapped[list[Any]]
    recipe: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(index=True)


class ProbeUnit(Base):
    """One of a probe's top units in a layer: its maximum activation over the image and a heatmap."""

    __tablename__ = "probe_units"
    __table_args__ = (Index("ix_probe_units_probe", "probe_id"), Index("ix_probe_units_heatmap", "heatmap_key"))

    id: Mapped[int] = mapped_column(primary_key=True)
    probe_id: Mapped[int] = mapped_column(ForeignKey("probes.id", ondelete="CASCADE"))
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    rank: Mapped[int]
    activation: Mapped[float]
    #: Position of the maximum on the layer's grid.
    y: Mapped[int]
    x: Mapped[int]
    #: The unit's activation over the image (transparent where it is at or below zero), a PNG.
    heatmap_key: Mapped[str] = mapped_column(String(80))
    #: Building Blocks' spatial attribution, made on demand (issue 23): the units of the layer before that add most
    #: to this one at (y, x), ``[{"layer", "unit", "share", "y", "x"}]``; None until asked for.
    contributions: Mapped[list[Any] | None] = mapped_column(default=None)


class ProbeGroup(Base):
    """One of a probe's neuron groups in a layer (Building Blocks): an NMF component of the probe's own activations.

    The layer's post-ReLU activations over the image's positions, (H x W, C), factorized into a few groups:
    ``vector`` is the group's direction over the layer's units (unit norm), ``heatmap_key`` its spatial map
    over the image (a PNG in the group's colour), ``share`` its part of the reconstructed activity, and
    ``fvu`` the fraction of the layer's variance all its groups together leave unexplained (the same on
    each group of a layer).
    """

    __tablename__ = "probe_groups"
    __table_args__ = (UniqueConstraint("probe_id", "layer_id", "group"), Index("ix_probe_groups_heatmap", "heatmap_key"))

    id: Mapped[int] = mapped_column(primary_key=True)
    probe_id: Mapped[int] = mapped_column(ForeignKey("probes.id", ondelete="CASCADE"))
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    group: Mapped[int]
    share: Mapped[float]
    fvu: Mapped[float]
    vector: Mapped[list[Any]]
    heatmap_key: Mapped[str] = mapped_column(String(80))


class ProbeRender(Base):
    """A picture rendered for a probe on demand by the worker: a neuron group's direction (``kind`` ``group``,
    ``index`` the group), with the renderer's recipe and the objective it reached."""

    __tablename__ = "probe_renders"
    __table_args__ = (UniqueConstraint("probe_id", "layer_id", "kind", "index"), Index("ix_probe_renders_image", "image_key"))

    id: Mapped[int] = mapped_column(primary_key=True)
    probe_id: Mapped[int] = mapped_column(ForeignKey("probes.id", ondelete="CASCADE"))
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    kind: Mapped[str] = mapped_column(String(16))
    index: Mapped[int]
    image_key: Mapped[str] = mapped_column(String(80))
    objective: Mapped[float]
    recipe: Mapped[dict[str, Any]]


class ProbeAttribution(Base):
    """One attribution map of a probe (issue 23): which pixels drove a class's logit or a unit's activation.

    ``unit_id`` is the target (a logit unit for a class; a unit at its strongest position ``y``, ``x``), ``method``
    the Captum method (`precompute.methods.attribution.METHODS`), ``at`` Grad-CAM's layer ("" for the others),
    ``heatmap_key`` the map over the image (a PNG), ``params`` the method's parameters and figures.
    """

    __tablename__ = "probe_attributions"
    __table_args__ = (UniqueConstraint("probe_id", "unit_id", "method", "at"),
                      Index("ix_probe_attributions_heatmap", "heatmap_key"))

    id: Mapped[int] = mapped_column(primary_key=True)
    probe_id: Mapped[int] = mapped_column(ForeignKey("probes.id", ondelete="CASCADE"))
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    y: Mapped[int | None]
    x: Mapped[int | None]
    method: Mapped[str] = mapped_column(String(24))
    at: Mapped[str] = mapped_column(String(64))
    heatmap_key: Mapped[str] = mapped_column(String(80))
    params: Mapped[dict[str, Any]]


class SanityStep(Base):
    """One step of a model's cascading randomization test of an attribution method (Adebayo et al. 2018), for one
    kind of target (``class``: each image's top class; ``unit``: its deepest layer's most active unit) and Grad-CAM
    layer ``at`` ("" for the pixel methods).

    At ``depth`` the top ``depth`` weight groups are re-initialized (``randomized`` names the last one). ``pairs``
    holds, per image, the figures of the method's map on the randomized network against the real one's
    (`precompute.methods.attribution.compare`: ``spearman``, ``spearman_signed``, ``ssim``, ``hog``), or None where a map
    was degenerate (constant or non-finite: counted in ``degenerate``, never scored); ``figures`` each figure's
    median over the scored images with its 95% bootstrap interval (``median``, ``low``, ``high``), or None when most
    maps were degenerate.
    """

    __tablename__ = "sanity_steps"
    __table_args__ = (UniqueConstraint("model_id", "method", "target", "at", "depth"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    method: Mapped[str] = mapped_column(String(24))
    target: Mapped[str] = mapped_column(String(8))
    at: Mapped[str] = mapped_column(String(64))
    depth: Mapped[int]
    randomized: Mapped[str] = mapped_column(String(64))
    images: Mapped[int]
    degenerate: Mapped[int]
    figures: Mapped[dict[str, Any]]
    pairs: Mapped[list[Any]]
    recipe_sha256: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class ProbeAblation(Base):
    """A probe's top classes with one main layer's top units (its `ProbeUnit` rows there) set to zero."""

    __tablename__ = "probe_ablations"
    __table_args__ = (UniqueConstraint("probe_id", "layer_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    probe_id: Mapped[int] = mapped_column(ForeignKey("probes.id", ondelete="CASCADE"))
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    #: Top classes, best first, as `Probe.classes`.
    classes: Mapped[list[Any]]


class Ablation(Base):
    """The network over the dataset with a unit, a set of units or a direction ablated (`precompute.live.ablation`).

    ``key`` names what (``units:mixed3b:1,5``, ``family:curves:mixed3b:10``, ``direction:mixed3b_sae:17``); ``units``
    are the base layer's channels set to zero or their mean (``mode``), ``direction_id`` the derived unit whose
    direction was removed; ``figures``: top-1/top-5 before and after and the classes that changed most.
    """

    __tablename__ = "ablations"
    __table_args__ = (UniqueConstraint("model_id", "key", "mode"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    key: Mapped[str] = mapped_column(String(200))
    mode: Mapped[str] = mapped_column(String(8))
    units: Mapped[list[Any]]
    direction_id: Mapped[int | None] = mapped_column(ForeignKey("units.id"))
    label: Mapped[str] = mapped_column(String(200))
    figures: Mapped[dict[str, Any]]
    recipe_sha256: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class UnitTuning(Base):
    """A unit's responses to one stimulus family (`app.core.stimuli`), or to its top examples rotated (``joint``).

    ``responses`` is the family's array (axes in `app.core.stimuli.FAMILIES` order, pooled axes reduced; ``joint``:
    one per rotation); ``preferred`` names the parameters of the largest; ``figures`` holds the selectivity
    figures; ``selectivity`` is the one the family page ranks by.
    """

    __tablename__ = "unit_tuning"
    __table_args__ = (UniqueConstraint("unit_id", "family"), Index("ix_unit_tuning_family", "family", "selectivity"))

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    family: Mapped[str] = mapped_column(String(16))
    responses: Mapped[list[Any]]
    preferred: Mapped[dict[str, Any]]
    figures: Mapped[dict[str, Any]]
    selectivity: Mapped[float]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class Factorization(Base):
    """A derived layer (kind ``nmf`` or ``sae``): directions over its base layer's units, and how well they fit.

    ``blob_key`` names the arrays (an ``.npz``: NMF's ``components``; a dictionary's ``encoder``,
    ``encoder_bias``, ``decoder``, ``decoder_bias``, ``scale``) the precompute stages read the
    directions from; ``figures`` are the fit's own numbers (reconstruction error, unexplained
    variance, active and dead features, accuracy with the layer replaced by its reconstruction).
    """

    __tablename__ = "factorizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"), unique=True)
    base_layer_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    method: Mapped[str] = mapped_column(String(8))
    components: Mapped[int]
    blob_key: Mapped[str] = mapped_column(String(80))
    recipe_sha256: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]]
    figures: Mapped[dict[str, Any]]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class DirectionWeight(Base):
    """A base unit's weight in a direction (an NMF component, a dictionary atom): "made of" and "part of".

    Kept where the weight is among the direction's largest (``in_direction`` rank) or among the
    unit's largest over the layer's directions (``in_unit`` rank), so both lists read from rows.
    """

    __tablename__ = "direction_weights"
    __table_args__ = (UniqueConstraint("direction_id", "unit_id"), Index("ix_direction_weights_unit", "unit_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    direction_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    weight: Mapped[float]
    in_direction: Mapped[int | None]
    in_unit: Mapped[int | None]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class UnitMixture(Base):
    """How polysemantic a base unit reads in one derived layer: how many of its directions it is made of.

    ``features`` counts the directions whose unit-norm vector puts at least the recipe's threshold on
    the unit; ``effective`` is the participation ratio of the directions' shares of the unit's
    reconstructed activity over the dataset (1: one feature explains it; n: n features equally).
    """

    __tablename__ = "unit_mixtures"
    __table_args__ = (UniqueConstraint("unit_id", "factorization_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    factorization_id: Mapped[int] = mapped_column(ForeignKey("factorizations.id", ondelete="CASCADE"))
    features: Mapped[int]
    effective: Mapped[float]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class LayerModules(Base):
    """The units of two adjacent main layers clustered by the strength of the weights between them (issue 22).

    ``modules``: one entry per module, ``{"units": {layer: [index, ...]}, "inside": share of its weight that
    stays inside, "edges": its strongest inside connections [[source, target, norm]]}``; ``between``: the
    modules' summed weights, module by module; ``ncut`` the clustering's normalized cut, ``shuffled`` the same
    clustering's on the weights shuffled within the pair, and ``better`` the fraction of shuffles that cluster
    better (a lower cut: Filan et al.'s clusterability test).
    """

    __tablename__ = "layer_modules"
    __table_args__ = (UniqueConstraint("source_id", "target_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    target_id: Mapped[int] = mapped_column(ForeignKey("layers.id"))
    count: Mapped[int]
    ncut: Mapped[float]
    shuffled: Mapped[list[Any]]
    better: Mapped[float]
    modules: Mapped[list[Any]]
    between: Mapped[list[Any]]
    #: Filan et al.'s z-score against the shuffles, the smooth control's cut and the verdict (``modular``,
    #: ``clusterable`` or ``not clusterable``); None in rows made before issue 30.
    z: Mapped[float | None]
    control_ncut: Mapped[float | None]
    verdict: Mapped[str | None] = mapped_column(String(24))
    recipe_sha256: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class NetworkModules(Base):
    """The whole network's units clustered as one graph by Filan et al.'s protocol (`precompute.stages.modules`, issue 30):
    the normalized cut against ``shuffled`` (each layer's weights permuted), ``percentile`` (the share of shuffles that
    cut as low or lower) and ``z``, the smooth control's cut and the verdict; ``modules``: each module's units by layer.
    """

    __tablename__ = "network_modules"
    __table_args__ = (UniqueConstraint("model_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    count: Mapped[int]
    ncut: Mapped[float]
    shuffled: Mapped[list[Any]]
    percentile: Mapped[float]
    z: Mapped[float]
    control_ncut: Mapped[float]
    verdict: Mapped[str] = mapped_column(String(24))
    isolated: Mapped[int]
    modules: Mapped[list[Any]]
    recipe_sha256: Mapped[str] = mapped_column(String(64))
    recipe: Mapped[dict[str, Any]]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))


class UnitMatch(Base):
    """One of a unit's nearest units in another model: the correlation of their activations over the same images,
    spatially pooled (issue 22's universality; `precompute.stages.match`). ``rank`` 0 is the best match."""

    __tablename__ = "unit_matches"
    __table_args__ = (UniqueConstraint("unit_id", "other_id"), Index("ix_unit_matches_unit", "unit_id", "rank"))

    id: Mapped[int] = mapped_column(primary_key=True)
    unit_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    other_id: Mapped[int] = mapped_column(ForeignKey("units.id"))
    rank: Mapped[int]
    correlation: Mapped[float]
    #: The pair's correlation over images and positions (Li et al.; None in matches made before it).
    positionwise: Mapped[float | None]
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
