"""The pages' data: one frozen dataclass per page and part of a page, in one module because they are the JSON schema.

A builder (`app.browse`, `app.live_pages`, `app.tuning`) returns one of
these; `app.respond.respond` serializes it as the JSON twin or hands it to
the page's template as ``page``: the two never drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.core.stimuli import CONVENTIONS
from app.core.zoo.concepts import Label

# Browsing: models, layers, units, circuits, examples, search ----------------------------------------


@dataclass(frozen=True)
class UnitRef:
    """A unit as other pages show it: where it is, what it is called, its picture if rendered."""

    model: str
    layer: str
    index: int
    label: str | None
    url: str
    image_url: str | None
    #: Until the unit is rendered: the crop of its top dataset example, shown marked as such.
    placeholder_url: str | None = None
    #: Its top concept label's name (`app.core.zoo.concepts.Label`), where it has a clear one.
    concept: str | None = None


@dataclass(frozen=True)
class ModelSummary:
    name: str
    title: str
    url: str
    json_url: str
    layers: int
    units: int
    rendered_units: int


@dataclass(frozen=True)
class IndexPage:
    title: str
    models: list[ModelSummary]
    kind: str = "index"


@dataclass(frozen=True)
class LayerSummary:
    name: str
    kind: str
    channels: int
    url: str
    rendered: dict[str, int]
    with_examples: int
    with_circuits: int
    strip: list[UnitRef]
    #: The layer's DeepDream image (Microscope's ``deep_dream``), once rendered.
    deep_dream_url: str | None = None


@dataclass(frozen=True)
class ModelPage:
    title: str
    name: str
    description: str
    url: str
    json_url: str
    layers: list[LayerSummary]
    commands: list[str]
    probe_url: str | None
    #: A worker is running: the coverage table refreshes itself as it fills the model in.
    filling: bool = False
    #: What a reader should know about these weights (the registry's notes: a dropped output, a dequantized file).
    notes: list[str] = field(default_factory=list)
    #: The cascading randomization test of each attribution method on this model (issue 23), where it was run.
    sanity: list[SanityRow] = field(default_factory=list)
    sanity_command: str | None = None
    #: The cascades drawn (SVG), where the test was run.
    sanity_plot_url: str | None = None
    #: The whole network's modularity (`app.core.store.NetworkModules`: ncut, shuffled_mean, percentile, z, control_ncut,
    #: verdict, shuffles), where it was measured.
    modularity: dict[str, Any] | None = None
    #: Stage → why the network gets none of it (`app.core.zoo.skips.model_skips`): one line each.
    skips: dict[str, str] = field(default_factory=dict)
    #: What each live worker is doing now, in words (`app.status.worker_doing`), and what its fill does in order.
    workers: list[str] = field(default_factory=list)
    fill_order: str | None = None
    kind: str = "model"


@dataclass(frozen=True)
class SanityRow:
    """One attribution method's randomization test (Adebayo et al.) for one kind of target: how much its maps change as
    the weights are re-initialized from the top down. ``steps``: ``{"depth", "randomized", "images", "degenerate",
    "figures"}`` cumulatively, ``figures`` each figure's median with its 95% bootstrap interval (``spearman``,
    ``spearman_signed``, ``ssim``, ``hog``), or None where most maps were degenerate. The verdict reads the step
    ``judged_step`` (1-based) against the control (`app.core.verdicts`)."""

    method: str
    label: str
    #: ``class`` or ``unit``.
    target: str
    #: Grad-CAM's layer ("" for the pixel methods).
    at: str
    steps: list[dict[str, Any]]
    verdict: Verdict
    control: bool
    judged_step: int


@dataclass(frozen=True)
class Verdict:
    """What the randomization test says about a method, in words, and where its figure is."""

    #: True: the maps change when the top layers are randomized (they depend on the model); False: they barely do;
    #: None: not measured for this method, kind of target and layer, or inconclusive (the text says which).
    passes: bool | None
    text: str
    url: str


@dataclass(frozen=True)
class NotHeldPage:
    """A link to a model Microscope knows but this store does not hold (a 404 that says what it is)."""

    title: str
    error: str
    name: str
    description: str
    #: The store's models, each with a line on how it relates to the one asked for where the registry says.
    held: list[dict[str, str]]
    command: str
    kind: str = "not_held"


@dataclass(frozen=True)
class LayerPage:
    title: str
    model: str
    model_url: str
    name: str
    kind: str
    channels: int
    url: str
    json_url: str
    units: list[UnitRef]
    page: int
    pages: int
    next_url: str | None
    missing_command: str | None
    #: POST here to queue every unit of the layer without a picture (None when all have one).
    render_url: str | None = None
    #: The concept the units shown are filtered by (None: every unit), and the layer's concepts to filter by:
    #: ``[{"name", "units", "url"}]``, commonest first.
    label: str | None = None
    concepts: list[dict[str, Any]] = field(default_factory=list)
    #: The whole layer's DeepDream render (``image_url``, ``objective``, ``recipe``), or the command that makes it.
    deep_dream: Visualization | None = None
    deep_dream_command: str | None = None
    #: The layer's tuning family pages (`app.tuning`), by family, where the tuning stage has run on it.
    tuning: dict[str, str] = field(default_factory=dict)
    #: A derived layer's factorization; a base layer's derived layers (``{"name", "method", "url"}``).
    factorization: FactorSummary | None = None
    derived: list[dict[str, Any]] = field(default_factory=list)
    #: Where a main layer has no derived layer yet: the commands that make them.
    derived_commands: list[str] = field(default_factory=list)
    #: The modules of the layer with the main layer before it and with the one after (`app.modules`).
    modules: list[ModulesSection] = field(default_factory=list)
    #: Stage → why it leaves this layer out (`app.core.zoo.skips.layer_skips`), the model's too: one line each.
    skips: dict[str, str] = field(default_factory=dict)
    kind_of_page: str = "layer"


@dataclass(frozen=True)
class Visualization:
    technique: str
    image_url: str
    objective: float | None
    recipe: dict[str, Any]


@dataclass(frozen=True)
class Example:
    kind: str
    rank: int
    activation: float
    image: str
    crop_url: str
    url: str
    y: int
    x: int


@dataclass(frozen=True)
class Connection_:
    """A circuit edge seen from one end: the unit at the other end and the weight between."""

    unit: UnitRef
    weight: float
    norm: float
    kind: str
    kernel: list[Any]
    kernel_url: str | None


@dataclass(frozen=True)
class ConnectionGroup:
    """A unit's connections to one other layer, strongest (largest L2 norm) first, each with its sign."""

    layer: str
    layer_kind: str
    #: "indirect" when expanded through the main layer between, else "direct" (kernels may be expanded).
    kind: str
    edges: list[Connection_]
    #: How many connections the group has; ``edges`` may hold only the strongest few.
    total: int
    #: The group in full (an htmx fragment and its JSON twin), when ``edges`` is cut short.
    more_url: str | None
    #: The largest norm in the group (scales the strength bars).
    strongest: float
    #: An approximation these weights carry (an LRN taken as the identity), from their recipe.
    note: str | None = None


@dataclass(frozen=True)
class ConnectionsPage:
    """One group of a unit's connections in full: what a unit page's "more" loads."""

    title: str
    unit: UnitRef
    direction: str
    group: ConnectionGroup
    kind: str = "connections"


@dataclass(frozen=True)
class Missing:
    what: str
    command: str


@dataclass(frozen=True)
class UnitSummary:
    """A unit page's first card (issue 34): what its sections say, one line each, where they have it. Every field is
    None where the section has nothing yet."""

    #: Its clearest concept label: ``{"name", "score", "q"}``.
    label: dict[str, Any] | None = None
    #: Its most selective tuning family: ``{"family", "title", "selectivity", "preferred"}``.
    tuning: dict[str, Any] | None = None
    #: How many dictionary features weigh on it, and their participation ratio: ``{"layer", "features", "effective"}``.
    polysemanticity: dict[str, Any] | None = None
    #: Its strongest input and output by the expanded weights' norm: ``{"unit", "label", "url", "weight"}``.
    strongest_input: dict[str, Any] | None = None
    strongest_output: dict[str, Any] | None = None
    #: Top-1 accuracy over the dataset without it (zeroed): ``{"mode", "top1", "ablated_top1"}``.
    ablation: dict[str, Any] | None = None


@dataclass(frozen=True)
class UnitPage:
    title: str
    unit: UnitRef
    json_url: str
    model_url: str
    layer_url: str
    layer_kind: str
    previous_url: str | None
    next_url: str | None
    visualizations: list[Visualization]
    top_examples: list[Example]
    bottom_examples: list[Example]
    stats: dict[str, Any] | None
    inputs: list[ConnectionGroup]
    outputs: list[ConnectionGroup]
    #: The same unit seen in its block output or branch layer.
    same_unit: UnitRef | None
    missing: list[Missing] = field(default_factory=list)
    #: Until the unit's channel visualization exists: where the page asks a worker for it (POST) and
    #: polls its status (GET).
    render_url: str | None = None
    #: Concepts its top examples share (`app.core.zoo.concepts`), best first; empty with ``labelled`` true:
    #: no clear concept; ``labelled`` false: the labels stage has not run on this layer.
    labels: list[Label] = field(default_factory=list)
    labelled: bool = False
    #: Its responses to parametric stimuli and to its top example rotated (`app.tuning`).
    tuning: TuningSection | None = None
    #: A direction's base units with the largest weights in it, and its layer's factorization.
    made_of: list[Weighted] = field(default_factory=list)
    factorization: FactorSummary | None = None
    #: A base unit's directions in each derived layer over its layer (with its polysemanticity there).
    part_of: list[PartOf] = field(default_factory=list)
    #: Its nearest units in other models of the store (`precompute.stages.match`), by correlation, best first.
    matches: list[Match] = field(default_factory=list)
    #: The unit (or direction) ablated over the dataset (issue 23).
    ablation: AblationView | None = None
    #: What the sections below say, in one card (`app.browse.summary`).
    summary: UnitSummary = field(default_factory=lambda: UnitSummary())
    kind: str = "unit"


@dataclass(frozen=True)
class ExamplePage:
    title: str
    unit: UnitRef
    example: Example
    image_url: str
    #: The receptive field of the example's position, in percent of the image (left, top, width, height).
    box: tuple[float, float, float, float]
    dataset: str
    kind: str = "example"


@dataclass(frozen=True)
class SearchResult:
    label: str
    url: str
    #: Why it matched: ``unit``, ``model``, ``layer``, ``class`` (its class label) or ``concept`` (its concept label).
    reason: str
    #: The unit found, with its picture (None for a model or layer).
    unit: UnitRef | None = None
    #: A concept hit's score (coverage x log2 lift).
    score: float | None = None


@dataclass(frozen=True)
class SearchPage:
    title: str
    query: str
    results: list[SearchResult]
    #: Results over every page, this page's number (from 1), and the neighbours' URLs.
    total: int = 0
    page: int = 1
    pages: int = 1
    previous_url: str | None = None
    next_url: str | None = None
    kind: str = "search"


# Live: renders on demand, probes, login ----------------------------------------------------


@dataclass(frozen=True)
class RenderStatus:
    """Where a unit's picture stands: ``rendered``, ``queued``, ``running``, ``none`` or ``off``."""

    unit: UnitRef
    state: str
    #: The job's place in the queue (1 is next) and how many wait.
    position: int | None
    pending: int
    #: Workers with a recent heartbeat; with none, ``message`` gives the command that starts one.
    workers: int
    message: str
    status_url: str
    #: Seconds until the page asks again (none once the picture is in, or with no queue).
    poll: int | None
    kind: str = "render-status"


@dataclass(frozen=True)
class LayerRequest:
    model: str
    layer: str
    #: Units without a picture that are now queued (or were already), in jobs of `LAYER_BATCH`.
    queued: int
    missing: int
    message: str
    kind: str = "layer-request"


@dataclass(frozen=True)
class ProbeForm:
    title: str
    model: str
    action: str
    api: str
    max_bytes: int
    max_pixels: int
    kind: str = "probe-form"


@dataclass(frozen=True)
class ProbedUnit:
    unit: UnitRef
    rank: int
    activation: float
    y: int
    x: int
    heatmap_url: str
    #: Its attribution maps (GET), or a request for them (POST).
    attribution_url: str | None = None
    #: The units of the layer before that add most to it at (y, x) (Building Blocks' spatial attribution), once asked.
    contributions: list[Contributor] | None = None


@dataclass(frozen=True)
class Contributor:
    unit: UnitRef
    #: Its part of the probed unit's summed positive attribution (activation times gradient), and where it is largest.
    share: float
    y: int
    x: int


@dataclass(frozen=True)
class ContributionsStatus:
    """Where the spatial attribution of a probe's layer stands: ``done``, ``queued``, ``running``, ``failed``, ``none``
    (POST ``url`` to ask) or ``off``."""

    layer: str
    state: str
    message: str
    url: str
    poll: int | None = None
    kind: str = "contributions"


@dataclass(frozen=True)
class GroupRender:
    """Where the picture of a probe's neuron group stands: ``rendered``, ``queued``, ``running``, ``failed``,
    ``none`` (ask for it: POST ``status_url``) or ``off`` (no job queue)."""

    layer: str
    group: int
    state: str
    message: str
    status_url: str
    image_url: str | None = None
    #: The direction objective the picture reached, and its recipe.
    objective: float | None = None
    recipe: dict[str, Any] | None = None
    poll: int | None = None
    #: ``group`` (a neuron group's direction) or ``caricature`` (the layer's caricature of the probe).
    picture: str = "group"
    kind: str = "group-render"


@dataclass(frozen=True)
class AblationRun:
    """One ablation's figures (``mode`` ``zero`` or ``mean``), or where its job stands."""

    mode: str
    state: str
    figures: dict[str, Any] | None = None
    recipe_sha256: str | None = None
    message: str = ""


@dataclass(frozen=True)
class AblationView:
    """What the network does over the dataset without a unit, a family's top units or a direction (issue 23)."""

    key: str
    label: str
    #: POST here (``?mode=zero`` or ``mean``) to queue it; GET for where it stands.
    url: str
    runs: list[AblationRun]
    poll: int | None = None
    kind: str = "ablation"


@dataclass(frozen=True)
class AttributionMap:
    method: str
    label: str
    #: Grad-CAM's layer ("" for the others).
    at: str
    heatmap_url: str
    params: dict[str, Any]
    verdict: Verdict


@dataclass(frozen=True)
class AttributionTarget:
    """What a probe's maps explain: a top class or one of the units it lists (at its strongest position)."""

    #: ``class`` or ``unit``.
    kind: str
    unit: UnitRef
    y: int | None
    x: int | None
    maps: list[AttributionMap]
    #: POST here to have the missing maps made (``?at=LAYER``: Grad-CAM at that layer); GET for their state.
    request_url: str
    #: The job's state while maps are being made (``queued``, ``running``, ``failed``), else ``done`` or ``none``.
    state: str = "done"
    message: str = ""


@dataclass(frozen=True)
class ProbedGroup:
    """One of a probe's neuron groups in a layer (Building Blocks): where on the image, made of which units."""

    group: int
    #: Its map's colour (``#rrggbb``), and its part of the layer's reconstructed activity.
    colour: str
    share: float
    heatmap_url: str
    #: The units with the largest weight in its (unit-norm) direction.
    units: list[Weighted]
    render: GroupRender


@dataclass(frozen=True)
class ProbedLayer:
    name: str
    url: str
    units: list[ProbedUnit]
    groups: list[ProbedGroup] = field(default_factory=list)
    #: The fraction of the layer's variance over the image's positions that its groups leave unexplained.
    groups_fvu: float | None = None
    #: The probe's top classes with this layer's top units set to zero (issue 23).
    ablated_classes: list[dict[str, Any]] = field(default_factory=list)
    #: The layer's caricature of the image (Lucid's recipe), made on demand.
    caricature: GroupRender | None = None
    #: Its units' contributors in the layer before (none for the first layer with a map).
    contributions: ContributionsStatus | None = None


@dataclass(frozen=True)
class ProbePage:
    title: str
    model: str
    #: The probe's id in its URLs (random, not derived from the image).
    id: str
    url: str
    json_url: str
    #: ``done``, or the job's state (``queued``, ``running``, ``failed``) while the worker has not finished.
    state: str
    message: str
    status_url: str
    poll: int | None
    #: Where its owner deletes it (a POST from the page's button, or DELETE ``json_url``); None when probes are off.
    delete_url: str | None = None
    sha256: str | None = None
    image_url: str | None = None
    width: int | None = None
    height: int | None = None
    created_at: datetime | None = None
    classes: list[dict[str, Any]] = field(default_factory=list)
    layers: list[ProbedLayer] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    #: Attribution maps by target (issue 23), the top class's first; the layers Grad-CAM may be asked at.
    attributions: list[AttributionTarget] = field(default_factory=list)
    cam_layers: list[str] = field(default_factory=list)
    kind: str = "probe"


@dataclass(frozen=True)
class LoginPage:
    title: str
    #: Where to go once logged in (a path on this server).
    next: str
    required: bool
    message: str = ""
    kind: str = "login"


# Tuning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tuning:
    """One family of a unit's tuning."""

    family: str
    title: str
    preferred: dict[str, float]
    figures: dict[str, Any]
    selectivity: float
    #: The response array: axes as ``axes`` lists them (``joint``: one value per rotation).
    responses: list[Any]
    axes: list[dict[str, Any]]
    plot_url: str
    #: The preferred stimulus, drawn by the server (None for joint tuning: its stimulus is the top example).
    stimulus_url: str | None
    family_url: str


@dataclass(frozen=True)
class TuningSection:
    """A unit page's Tuning section: computed, or what is still coming and its command."""

    computed: bool
    families: list[Tuning] = field(default_factory=list)
    conventions: str = CONVENTIONS
    #: Where its stimuli were drawn: the canvas, the position read and the receptive field (`app.core.stimuli.Placement`;
    #: a block output's unit has its branch's), and the run of units that share it.
    placement: dict[str, Any] | None = None
    command: str | None = None


@dataclass(frozen=True)
class FamilyUnit:
    unit: int
    url: str
    image_url: str | None
    #: Until it is rendered: its top dataset example's crop (shown marked as such).
    placeholder_url: str | None
    label: str | None
    selectivity: float
    #: The preferred parameters by name (curves: ``orientation``, ``radius``, ``polarity``).
    preferred: dict[str, float]
    figures: dict[str, Any]
    plot_url: str
    stimulus_url: str | None
    #: Where it sits on the page's circle (percent of the circle's box), for the first `ON_CIRCLE` units.
    at: tuple[float, float] | None = None


@dataclass(frozen=True)
class FamilyPage:
    title: str
    model: str
    layer: str
    family: dict[str, Any]
    conventions: str
    #: Every tuned unit of the layer, most selective first.
    units: list[FamilyUnit]
    model_url: str
    layer_url: str
    json_url: str
    #: The layer's other family pages.
    families: dict[str, str]
    #: How ``selectivity`` is computed.
    selectivity: str
    #: The family's most selective units ablated together over the dataset (issue 23).
    ablation: AblationView | None = None
    kind: str = "family"


# Directions as units: NMF groups and dictionary features (`app.directions`) -------------------------


@dataclass(frozen=True)
class Weighted:
    """A unit and its weight in a direction (a direction's "made of", or a unit's "part of")."""

    unit: UnitRef
    weight: float


@dataclass(frozen=True)
class FactorSummary:
    """A derived layer's factorization: what it is over, its figures and recipe, and its arrays to download."""

    layer: str
    url: str
    method: str
    base: str
    base_url: str
    components: int
    figures: dict[str, Any]
    recipe: dict[str, Any]
    arrays_url: str


@dataclass(frozen=True)
class PartOf:
    """The directions of one derived layer a base unit weighs most in, and how polysemantic it reads there:
    ``features`` directions put a large weight on it, ``effective`` is the participation ratio of their shares
    of its activity (`app.core.store.UnitMixture`)."""

    layer: str
    url: str
    method: str
    features: int | None
    effective: float | None
    threshold: float | None
    directions: list[Weighted]


@dataclass(frozen=True)
class Module:
    """One module of a layer pair: its units (both layers), the share of its weight inside, its strongest edges."""

    number: int
    units: list[UnitRef]
    total: int
    inside: float
    edges: list[dict[str, Any]]


@dataclass(frozen=True)
class ModulesSection:
    """A layer pair's modules (`app.core.store.LayerModules`): how clusterable it is against its shuffles, and each module."""

    source: str
    target: str
    source_url: str
    target_url: str
    ncut: float
    shuffled: list[float]
    shuffled_mean: float
    better: float
    modules: list[Module]
    #: The strongest weights between two modules: ``{"modules": [a, b], "weight"}``.
    between: list[dict[str, Any]]
    recipe: dict[str, Any]
    z: float | None = None
    control_ncut: float | None = None
    verdict: str | None = None


@dataclass(frozen=True)
class MethodEntry:
    """One method on the methods page: what it follows, how it is set, where it differs and which test checks it."""

    key: str
    name: str
    paper: str
    code: str
    parameters: str
    deviations: str
    #: ``tests/file.py::test_name`` of each test that checks it against its reference.
    tests: tuple[str, ...]


@dataclass(frozen=True)
class MethodsPage:
    title: str
    url: str
    json_url: str
    methods: list[MethodEntry]
    kind: str = "methods"


@dataclass(frozen=True)
class Match:
    """One of a unit's nearest units in another model (`precompute.stages.match`): the pooled correlation (``weight``), the
    position-wise one (Li et al.), and each against the permutation null's 99th percentile for this unit's layer
    (``above_chance``: the pooled correlation above its threshold; None for matches stored without a null)."""

    unit: UnitRef
    weight: float
    positionwise: float | None
    threshold: float | None
    positionwise_threshold: float | None
    above_chance: bool | None
