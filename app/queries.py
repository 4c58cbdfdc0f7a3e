"""The statements behind the pages, built once at import (requests only bind values).

Building SQLAlchemy expressions costs more than running these indexed
queries on SQLite, so the hot pages use these prepared shapes.
"""

from __future__ import annotations

from sqlalchemy import bindparam, func, select

from app.core.store import (Ablation, Artifact, Dataset, DatasetExample, DatasetImage, DirectionWeight, Edge, Factorization, Layer, LayerArtifact, LayerModules, NetworkModules,
                       Model, Probe, ProbeAblation, ProbeAttribution, ProbeGroup, ProbeRender, ProbeUnit, SanityStep, Run, UnitLabel, UnitMatch, UnitMixture, UnitStats, UnitTuning)

THUMBNAIL_TECHNIQUE = "channel"

thumbnails = select(Artifact.unit_id, Artifact.blob_key).where(
    Artifact.unit_id.in_(bindparam("ids", expanding=True)), Artifact.technique == THUMBNAIL_TECHNIQUE
)

#: The crop of each unit's strongest dataset example: the placeholder of a unit not yet rendered.
top_crops = select(DatasetExample.unit_id, DatasetExample.crop_key).where(
    DatasetExample.unit_id.in_(bindparam("ids", expanding=True)), DatasetExample.kind == "top", DatasetExample.rank == 0
)

rendered_in = select(func.count()).select_from(Artifact).where(
    Artifact.unit_id.in_(bindparam("ids", expanding=True)), Artifact.technique == THUMBNAIL_TECHNIQUE
)

all_thumbnails = (
    select(Artifact.unit_id, Artifact.blob_key).where(Artifact.technique == THUMBNAIL_TECHNIQUE).order_by(Artifact.unit_id)
)

artifacts = select(Artifact.technique, Artifact.blob_key, Artifact.objective, Artifact.recipe).where(
    Artifact.unit_id == bindparam("unit")
)

examples = (
    select(DatasetExample.kind, DatasetExample.rank, DatasetExample.activation, DatasetExample.crop_key,
           DatasetExample.y, DatasetExample.x, DatasetImage.path)
    .join(DatasetImage, DatasetExample.image_id == DatasetImage.id)
    .where(DatasetExample.unit_id == bindparam("unit"))
    .order_by(DatasetExample.kind.desc(), DatasetExample.rank)
)

example = (
    select(DatasetExample.activation, DatasetExample.crop_key, DatasetExample.y, DatasetExample.x,
           DatasetImage.path, DatasetImage.thumbnail_key, Dataset.name, DatasetImage.width, DatasetImage.height)
    .join(DatasetImage, DatasetExample.image_id == DatasetImage.id)
    .join(Dataset, DatasetImage.dataset_id == Dataset.id)
    .where(DatasetExample.unit_id == bindparam("unit"), DatasetExample.kind == bindparam("kind"),
           DatasetExample.rank == bindparam("rank"))
)

stats = (
    select(UnitStats.images, UnitStats.mean_max, UnitStats.active_fraction, UnitStats.histogram, Dataset.name)
    .join(Dataset, UnitStats.dataset_id == Dataset.id)
    .where(UnitStats.unit_id == bindparam("unit"))
)

edges = select(
    Edge.source_id, Edge.target_id, Edge.weight, Edge.norm, Edge.kind, Edge.kernel, Edge.kernel_key, Edge.run_id
).where((Edge.target_id == bindparam("unit")) | (Edge.source_id == bindparam("unit")))

run_params = select(Run.id, Run.params).where(Run.id.in_(bindparam("ids", expanding=True)))

examples_params = (
    select(Run.params).where(Run.stage == "examples", Run.finished_at.is_not(None)).order_by(Run.id.desc()).limit(1)
)

#: A unit's concept labels, best first.
labels = select(UnitLabel.concept, UnitLabel.name, UnitLabel.count, UnitLabel.of, UnitLabel.coverage,
                UnitLabel.base_rate, UnitLabel.lift, UnitLabel.score, UnitLabel.p, UnitLabel.q).where(
    UnitLabel.unit_id == bindparam("unit")).order_by(UnitLabel.rank)

#: The recipes of a model's finished labels runs (each names the layer it labelled).
labels_runs = select(Run.params).where(Run.stage == "labels", Run.model_id == bindparam("model"),
                                       Run.finished_at.is_not(None))

#: The top concept label of each unit (grids and tiles show it).
top_labels = select(UnitLabel.unit_id, UnitLabel.name).where(
    UnitLabel.unit_id.in_(bindparam("ids", expanding=True)), UnitLabel.rank == 0)

#: The labels of a layer's units (any rank): the layer page's filter.
layer_labels = select(UnitLabel.unit_id, UnitLabel.concept, UnitLabel.name).where(
    UnitLabel.unit_id.in_(bindparam("ids", expanding=True)))

#: Each layer's DeepDream render (Microscope's ``deep_dream``).
layer_dreams = select(LayerArtifact.layer_id, LayerArtifact.blob_key, LayerArtifact.objective, LayerArtifact.recipe).where(
    LayerArtifact.technique == "deep_dream")

#: One layer's DeepDream render: its blob, objective and recipe.
layer_dream = select(LayerArtifact.blob_key, LayerArtifact.objective, LayerArtifact.recipe).where(
    LayerArtifact.technique == "deep_dream", LayerArtifact.layer_id == bindparam("layer"))

#: A unit's tuning rows (every family), with the run each came from.
tuning = select(UnitTuning.family, UnitTuning.responses, UnitTuning.preferred, UnitTuning.figures,
                UnitTuning.selectivity, UnitTuning.run_id).where(UnitTuning.unit_id == bindparam("unit"))

#: One unit's row of one family.
tuning_row = select(UnitTuning.responses, UnitTuning.preferred, UnitTuning.figures, UnitTuning.run_id).where(
    UnitTuning.unit_id == bindparam("unit"), UnitTuning.family == bindparam("family"))

#: A layer's units' rows of one family, most selective first.
family = (select(UnitTuning.unit_id, UnitTuning.preferred, UnitTuning.figures, UnitTuning.selectivity, UnitTuning.run_id)
          .where(UnitTuning.unit_id.in_(bindparam("ids", expanding=True)), UnitTuning.family == bindparam("family"))
          .order_by(UnitTuning.selectivity.desc(), UnitTuning.unit_id))

#: The recipes of a model's finished tuning runs (each names the layer it tuned).
tuning_runs = select(Run.id, Run.params).where(Run.stage == "tuning", Run.model_id == bindparam("model"),
                                               Run.finished_at.is_not(None))

#: One run's recipe.
run_recipe = select(Run.params).where(Run.id == bindparam("run"))

#: The families a unit has rows of.
tuned_families = select(UnitTuning.family).where(UnitTuning.unit_id == bindparam("unit"))

# Probes ------------------------------------------------------------------------------------------

_probe = (select(Probe.id, Probe.public_id, Probe.sha256, Probe.image_key, Probe.width, Probe.height, Probe.created_at,
                 Probe.classes, Probe.recipe).join(Model, Probe.model_id == Model.id))
#: A model's stored probe by its image's digest, and by its (random) public id.
probe_by_sha256 = _probe.where(Model.name == bindparam("model"), Probe.sha256 == bindparam("sha256"))
probe_by_id = _probe.where(Model.name == bindparam("model"), Probe.public_id == bindparam("public_id"))

#: A probe's strongest units per layer, in the order the worker stored them.
probe_units = (select(ProbeUnit.unit_id, ProbeUnit.rank, ProbeUnit.activation, ProbeUnit.y, ProbeUnit.x,
                      ProbeUnit.heatmap_key, ProbeUnit.contributions).where(ProbeUnit.probe_id == bindparam("probe")).order_by(ProbeUnit.id))

#: Whether a blob is one of a probe's pictures (a unit's or a group's heatmap, a picture rendered for it).
probe_pictures = [
    select(column).where(column.class_.probe_id == bindparam("probe"), column == bindparam("key")).limit(1)
    for column in (ProbeUnit.heatmap_key, ProbeGroup.heatmap_key, ProbeRender.image_key, ProbeAttribution.heatmap_key)
]

#: Ablations over the dataset (issue 23), and a probe's classes with each layer's top units ablated.
ablations = (select(Ablation.mode, Ablation.figures, Ablation.recipe_sha256).join(Model, Ablation.model_id == Model.id)
             .where(Model.name == bindparam("model"), Ablation.key == bindparam("key")))
probe_ablations = (select(Layer.name, ProbeAblation.classes).join(Layer, ProbeAblation.layer_id == Layer.id)
                   .where(ProbeAblation.probe_id == bindparam("probe")))

#: A probe's attribution maps (issue 23), and a model's randomization test of each method.
probe_attributions = (select(ProbeAttribution.unit_id, ProbeAttribution.y, ProbeAttribution.x, ProbeAttribution.method,
                             ProbeAttribution.at, ProbeAttribution.heatmap_key, ProbeAttribution.params)
                      .where(ProbeAttribution.probe_id == bindparam("probe")).order_by(ProbeAttribution.id))
sanity_steps = (select(SanityStep.method, SanityStep.target, SanityStep.at, SanityStep.depth, SanityStep.randomized,
                      SanityStep.images, SanityStep.degenerate, SanityStep.figures)
                .join(Model, SanityStep.model_id == Model.id).where(Model.name == bindparam("model"))
                .order_by(SanityStep.target, SanityStep.method, SanityStep.depth))

#: A probe's neuron groups per layer (issue 22), and the pictures rendered for it on demand.
probe_groups = (select(Layer.name, ProbeGroup.group, ProbeGroup.share, ProbeGroup.fvu, ProbeGroup.vector,
                       ProbeGroup.heatmap_key, Layer.id)
                .join(Layer, ProbeGroup.layer_id == Layer.id).where(ProbeGroup.probe_id == bindparam("probe"))
                .order_by(ProbeGroup.id))
probe_renders = (select(Layer.name, ProbeRender.kind, ProbeRender.index, ProbeRender.image_key, ProbeRender.objective,
                        ProbeRender.recipe)
                 .join(Layer, ProbeRender.layer_id == Layer.id).where(ProbeRender.probe_id == bindparam("probe")))

#: Factorizations (issue 22): a derived layer's, the derived layers over a base layer, weights both ways.
factorization = (
    select(Factorization.method, Factorization.components, Factorization.blob_key, Factorization.figures,
           Factorization.recipe, Factorization.base_layer_id)
    .where(Factorization.layer_id == bindparam("layer"))
)
derived_layers = (
    select(Factorization.layer_id, Factorization.method).where(Factorization.base_layer_id == bindparam("layer"))
    .order_by(Factorization.method, Factorization.layer_id)
)
made_of = (
    select(DirectionWeight.unit_id, DirectionWeight.weight).where(
        DirectionWeight.direction_id == bindparam("unit"), DirectionWeight.in_direction.is_not(None))
    .order_by(DirectionWeight.in_direction)
)
part_of = (
    select(DirectionWeight.direction_id, DirectionWeight.weight).where(
        DirectionWeight.unit_id == bindparam("unit"), DirectionWeight.in_unit.is_not(None))
    .order_by(DirectionWeight.in_unit)
)
mixtures = (
    select(Factorization.layer_id, Factorization.method, UnitMixture.features, UnitMixture.effective)
    .join(Factorization, UnitMixture.factorization_id == Factorization.id)
    .where(UnitMixture.unit_id == bindparam("unit"))
)

layer_modules = (
    select(LayerModules.source_id, LayerModules.target_id, LayerModules.ncut, LayerModules.shuffled, LayerModules.better,
           LayerModules.modules, LayerModules.between, LayerModules.recipe, LayerModules.z, LayerModules.control_ncut,
           LayerModules.verdict)
    .where((LayerModules.source_id == bindparam("layer")) | (LayerModules.target_id == bindparam("layer")))
    .order_by(LayerModules.target_id)
)

matches = (
    select(UnitMatch.other_id, UnitMatch.correlation, UnitMatch.positionwise, Run.params)
    .join(Run, UnitMatch.run_id == Run.id).where(UnitMatch.unit_id == bindparam("unit"))
    .order_by(UnitMatch.rank)
)

network_modules = (
    select(NetworkModules.ncut, NetworkModules.shuffled, NetworkModules.percentile, NetworkModules.z,
           NetworkModules.control_ncut, NetworkModules.verdict, NetworkModules.isolated, NetworkModules.count)
    .join(Model, NetworkModules.model_id == Model.id).where(Model.name == bindparam("model"))
)
