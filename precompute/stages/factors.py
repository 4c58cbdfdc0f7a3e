"""The factors stage: directions in a layer's activation space, stored as a derived layer (issue 22).

For each chosen layer, one pass over the dataset samples post-ReLU
activation vectors at positions drawn with a seed (every image gives the
same number; a tenth of the images are held out for the figures), then:

- ``nmf``: scikit-learn's NMF with K groups (Building Blocks' "neuron
  groups", over the dataset instead of one image);
- ``sae``: a top-k sparse autoencoder (Gao et al. 2024, "Scaling and
  evaluating sparse autoencoders"): encoder, the k largest activations per
  position kept after a ReLU, a decoder whose atoms are renormalized to unit
  norm after every step, the pre-encoder bias tied to the decoder's, and the
  AuxK loss that makes dead features (silent over the last window of
  positions) reconstruct the residual. Trained in torch on the stage's
  device, checkpointed every few hundred steps; killed and run again it
  resumes at the last checkpoint.

The figures, held-out: the fraction of variance unexplained, the mean active
features per position, the fraction of dead features, and (on a labelled
dataset) the network's top-1/top-5 with the layer's output replaced by its
reconstruction against the original's. They are stored with the layer, as
are the directions' largest weights ("made of", "part of") and each base
unit's polysemanticity (`app.core.store.UnitMixture`). A new factorization of a
layer replaces the old one and everything made from its directions
(examples, renders, tuning, labels) in one transaction; its examples and
labels are then computed again.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import delete, select
from torch import Tensor

from app.core.errors import DatasetError, MicroscopeError
from app.core.store import (
    Artifact,
    DatasetExample,
    DirectionWeight,
    Factorization,
    Layer,
    ProbeUnit,
    Store,
    Unit,
    UnitLabel,
    UnitMixture,
    UnitStats,
    UnitTuning,
)
from app.core.store.algorithms import ALGORITHMS
from app.core.zoo import LayerSpec, ModelSpec
from app.core.zoo.spec import DERIVED_KINDS, derived_layer, derived_name
from app.core.zoo.skips import layer_skips
from precompute.methods.evaluate import evaluate
from precompute.stages.examples import ExamplesConfig, fingerprint, input_transform, run_examples
from precompute.running.images import batches, list_images
from precompute.models.derived import Code, NMFCode, SAECode, arrays_bytes, base_network, with_factors
from precompute.running.runs import catalogued_model, digested, finish_run, progress_bar, start_run
from precompute.running.context import Stage

#: Weights listed per direction ("made of") and per base unit ("part of").
LISTED = 12
#: A direction "puts a large weight" on a unit when its unit vector's entry is at least this (the
#: polysemanticity count; 0.2 is five times the typical entry of a random unit vector over 500 units).
LARGE_WEIGHT = 0.2
#: One image in ten is held out of the fit for the figures.
HOLD_OUT = 10


@dataclass(frozen=True)
class FactorsConfig:
    layers: tuple[LayerSpec, ...]
    method: str
    #: NMF's groups per layer.
    groups: int = 32
    #: A dictionary's features per base unit, and the active features per position.
    expansion: int = 8
    k: int = 32
    #: Positions sampled over the dataset (spread evenly over its images).
    samples: int = 200_000
    steps: int = 3000
    batch: int = 2048
    learning_rate: float = 1e-3
    seed: int = 0
    #: Examples per direction (the examples stage's k; a dictionary has thousands of directions).
    examples: int = 20
    image_batch: int = 32
    #: Score the network with each layer replaced by its reconstruction (two passes over a labelled dataset).
    accuracy: bool = True

    def __post_init__(self) -> None:
        if self.method not in DERIVED_KINDS:
            raise MicroscopeError(f"unknown --method {self.method!r}: choose nmf or sae")
        if not self.layers:
            raise MicroscopeError("no layers selected")
        for layer in self.layers:
            if "factors" in layer_skips(layer):
                raise MicroscopeError(f"{layer.name} is not factored: {layer_skips(layer)['factors']}")
        if min(self.groups, self.expansion, self.k, self.samples, self.steps, self.batch) < 1:
            raise MicroscopeError("--groups, --expansion, --k, --samples, --steps and --batch must be at least 1")

    def components(self, layer: LayerSpec) -> int:
        return self.groups if self.method == "nmf" else self.expansion * layer.channels


@dataclass
class FactorsResult:
    layers_factored: int = 0
    layers_reused: int = 0
    figures: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def recipe(spec: ModelSpec, layer: LayerSpec, config: FactorsConfig, weights_sha256: str, dataset: str) -> dict:
    params: dict[str, object] = {
        "algorithm": ALGORITHMS["factors"], "method": config.method, "model": spec.name, "layer": layer.name,
        "weights_sha256": weights_sha256, "dataset_fingerprint": dataset, "activations": "after the layer's ReLU",
        "components": config.components(layer), "samples": config.samples, "seed": config.seed,
        "held_out": f"every {HOLD_OUT}th image",
        # A unit's polysemanticity counts the directions whose unit vector puts at least this on it.
        "large_weight": LARGE_WEIGHT,
    }
    if config.method == "nmf":
        params.update(solver="scikit-learn NMF (coordinate descent, init nndsvda, max_iter 400)",
                      code="non-negative least squares on the fixed components (FISTA, 200 steps)")
    else:
        params.update(k=config.k, expansion=config.expansion, steps=config.steps, batch=config.batch,
                      learning_rate=config.learning_rate, optimizer="adam, linear decay over the last fifth",
                      architecture="top-k SAE: ReLU(TopK(W_enc (x/s - b_dec) + b_enc)), unit-norm decoder atoms, "
                                   "x/s with s = the RMS of the units",
                      dead="silent over the last 4 epochs' worth of positions (at most 1M); AuxK with k_aux = 2k, "
                           "coefficient 1/32, normalized by the residual's variance (openai/sparse_autoencoder)",
                      decoder_bias_start="geometric median of 32,768 positions (Weiszfeld)",
                      feature_activation="after top-k and its ReLU (what the reconstruction uses): examples, labels "
                                         "and tuning read it")
    return digested(params)


def default_layers(spec: ModelSpec) -> list[LayerSpec]:
    """The layers the worker factors: mixed3b and mixed4c (issue 22) where the model has them, else the main
    spatial layers a third and two thirds of the way through."""
    spatial = [layer for layer in spec.main_layers if "factors" not in layer_skips(layer)]
    named = [layer for layer in spatial if layer.name in ("mixed3b", "mixed4c")]
    if len(named) == 2 or not spatial:
        return named
    return sorted({spatial[len(spatial) // 3], spatial[(2 * len(spatial)) // 3]}, key=spatial.index)


def stored_recipe(store: Store, spec: ModelSpec, name: str) -> str | None:
    with store.session() as session:
        return session.scalar(
            select(Factorization.recipe_sha256).join(Layer, Factorization.layer_id == Layer.id)
            .where(Layer.name == name, Layer.model_id == catalogued_model(session, spec).id)
        )


def run_factors(stage: Stage, root: Path, config: FactorsConfig, poll: Callable[[], None] | None = None) -> FactorsResult:
    """Factor each chosen layer (skipping one whose factorization has this recipe), then its examples and labels."""
    from precompute.stages.labels import run_labels

    spec = base_network(stage.net).spec
    files = list_images(root, spec)
    if not files:
        raise DatasetError(f"no image under {root}")
    dataset = fingerprint(files)
    result = FactorsResult()
    baseline: dict[str, float] | None = None
    for layer in config.layers:
        params = recipe(spec, layer, config, stage.weights_sha256, dataset)
        name = derived_name(layer.name, config.method)
        if stored_recipe(stage.store, spec, name) != params["recipe_sha256"]:
            started = time.perf_counter()
            rows, held = sample_activations(stage, files, layer, config, poll)
            if config.method == "nmf":
                code, figures = fit_nmf(rows, held, config)
            else:
                code, figures = train_sae(rows, held, config, stage.device,
                                          _checkpoint(stage.store, params["recipe_sha256"]), poll, stage.progress)
            if config.accuracy:
                if baseline is None:
                    baseline = _accuracy(stage, root, files, None, None)
                if baseline:
                    figures.update(original_top1=baseline["top1"], original_top5=baseline["top5"],
                                   **_accuracy(stage, root, files, layer.name, code))
                else:
                    result.notes.append(f"{root} has no image in a class folder: no accuracy with {name} spliced in")
            mixtures = _mixtures(code, rows)
            write_factorization(stage.store, spec, layer, config.method, code, params, figures, mixtures)
            result.layers_factored += 1
            result.figures[name] = figures
            result.seconds[name] = round(time.perf_counter() - started, 1)
            _checkpoint(stage.store, params["recipe_sha256"]).unlink(missing_ok=True)
        else:
            result.layers_reused += 1
        factored = replace(stage, net=with_factors(stage.store, stage.net, stage.device))
        derived = factored.spec.layer(name)
        run_examples(factored, root, ExamplesConfig(layers=(derived,), k=config.examples, batch_size=config.image_batch))
        run_labels(stage.store, factored.spec, root, (derived,))
    return result


def sample_activations(stage: Stage, files: Sequence, layer: LayerSpec, config: FactorsConfig,
                       poll: Callable[[], None] | None = None) -> tuple[Tensor, Tensor]:
    """Post-ReLU activation vectors (N, C) at seeded positions of every image, fit and held-out ones apart
    (``poll`` between batches: a worker serves waiting requests there)."""
    net, spec = base_network(stage.net), base_network(stage.net).spec
    positions = layer.size * layer.size
    per_image = max(1, min(positions, math.ceil(config.samples / len(files))))
    fit: list[Tensor] = []
    held: list[Tensor] = []
    bar = progress_bar(total=len(files), unit="img", desc=f"sample {layer.name}", enabled=stage.progress)
    for batch in batches(files, input_transform(spec), config.image_batch):
        if batch.indices:
            with torch.no_grad():
                post = net(batch.images.to(stage.device), (layer.name,))[layer.name].relu()
            rows = post.permute(0, 2, 3, 1).reshape(len(batch.indices), positions, -1)
            for slot, index in enumerate(batch.indices):
                chosen = torch.randperm(positions, generator=torch.Generator().manual_seed(config.seed * 1_000_003 + index))
                (held if index % HOLD_OUT == HOLD_OUT - 1 else fit).append(rows[slot, chosen[:per_image].to(rows.device)].float().cpu())
        bar.update(len(batch.indices) + len(batch.failed))
        if poll is not None:
            poll()  # a worker serves waiting requests here (a render needs autograd: outside no_grad)
    bar.close()
    if not fit or not held:
        raise DatasetError(f"{len(files)} images are too few to factor {layer.name} (one in {HOLD_OUT} is held out)")
    return torch.cat(fit), torch.cat(held)


def _variance(rows: Tensor) -> float:
    return float((rows - rows.mean(dim=0)).pow(2).sum())


def fit_nmf(rows: Tensor, held: Tensor, config: FactorsConfig) -> tuple[NMFCode, dict]:
    from sklearn.decomposition import NMF

    model = NMF(n_components=config.groups, init="nndsvda", max_iter=400, random_state=config.seed)
    model.fit(rows.numpy())
    code = NMFCode(torch.from_numpy(model.components_.astype(np.float32)))
    with torch.no_grad():
        error = held - code.reconstruct(code.solve(held))
        codes = code.solve(held)
    figures = {
        "unexplained_variance": round(float(error.pow(2).sum()) / _variance(held), 4),
        "relative_error": round(float(error.norm() / held.norm()), 4),
        "active_per_position": round(float((codes > 1e-6 * codes.max()).float().sum(dim=1).mean()), 2),
        "fit_positions": len(rows), "held_out_positions": len(held), "iterations": int(model.n_iter_),
    }
    return code, figures


class _SAE(torch.nn.Module):
    def __init__(self, channels: int, features: int, k: int, mean: Tensor, generator: torch.Generator) -> None:
        super().__init__()
        decoder = F.normalize(torch.randn(features, channels, generator=generator), dim=1)
        self.decoder = torch.nn.Parameter(decoder)
        self.encoder = torch.nn.Parameter(decoder.clone())
        self.encoder_bias = torch.nn.Parameter(torch.zeros(features))
        self.decoder_bias = torch.nn.Parameter(mean.clone())
        self.k = k

    def forward(self, x: Tensor, dead: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """Reconstruction, the chosen features (N, k) and, given the dead mask, the AuxK reconstruction of the
        residual. Dense products throughout: on a CPU five matrix products of the batch beat gathering k
        atoms per position several times over."""
        centred = x - self.decoder_bias
        pre = centred @ self.encoder.T + self.encoder_bias
        top = pre.topk(self.k, dim=1)
        code = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        recon = code @ self.decoder + self.decoder_bias
        aux = None
        if dead is not None and bool(dead.any()):
            silent = dead.nonzero().squeeze(1)  # only the dead features' columns: usually a few
            among = pre[:, silent]
            picked = among.topk(min(len(silent), 2 * self.k), dim=1)
            aux = torch.zeros_like(among).scatter(1, picked.indices, picked.values.relu()) @ self.decoder[silent]
        return recon, top.indices, aux


#: The AuxK loss's coefficient (Gao et al.; ``auxk_coef`` in openai/sparse_autoencoder).
AUX_COEFFICIENT = 1 / 32


def aux_loss(aux: Tensor, residual: Tensor) -> Tensor:
    """The AuxK loss as openai/sparse_autoencoder's ``normalized_mse``: the dead features' reconstruction of the main
    reconstruction's residual, its mean squared error over the residual's own variance about its batch mean (0 where
    the residual does not vary). Their target adds the decoder bias to both sides, which cancels."""
    variance = (residual - residual.mean(dim=0, keepdim=True)).pow(2).mean()
    return ((aux - residual).pow(2).mean() / variance).nan_to_num(0.0, posinf=0.0)


def geometric_median(rows: Tensor, iterations: int = 64) -> Tensor:
    """The point nearest to all rows in summed distance (Weiszfeld's iteration), on the first 32,768 rows: the
    decoder bias's start, as openai/sparse_autoencoder's ``init_from_data_`` (which calls the geom-median package on
    32,768 rows; that package ships only as a 2022 source archive, so its iteration is written here and checked
    against scipy's minimizer in the tests)."""
    rows = rows[:32768].float()
    median = rows.mean(dim=0)
    for _ in range(iterations):
        weights = 1 / (rows - median).norm(dim=1).clamp(min=1e-6)
        median = (weights[:, None] * rows).sum(dim=0) / weights.sum()
    return median


@contextmanager
def _deterministic() -> Iterator[None]:
    """torch's deterministic algorithms for one training step (a killed run resumes to the same bits as one that
    was not killed, and two runs agree), and whatever the caller had outside it (a worker's renders in ``poll``)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def train_sae(rows: Tensor, held: Tensor, config: FactorsConfig, device: torch.device, checkpoint: Path,
              poll: Callable[[], None] | None = None, progress: bool = True) -> tuple[SAECode, dict]:
    """Train a top-k dictionary on ``rows``; its code and held-out figures. Resumes from ``checkpoint``."""
    channels = rows.shape[1]
    features, k = config.expansion * channels, min(config.k, config.expansion * channels)
    scale = float(rows.pow(2).mean().sqrt().clamp(min=1e-8))
    data = (rows / scale).to(device)
    generator = torch.Generator().manual_seed(config.seed)
    sae = _SAE(channels, features, k, geometric_median(data.cpu()), generator).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.learning_rate)
    decay_from = int(config.steps * 0.8)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 1.0 if step < decay_from else max(0.0, (config.steps - step) / max(1, config.steps - decay_from)))
    window = min(len(data) * 4, 1_000_000)
    silent = torch.zeros(features, dtype=torch.long, device=device)  # positions since each feature last fired
    order_generator = torch.Generator().manual_seed(config.seed + 1)
    start = 0
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        sae.load_state_dict(saved["sae"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        silent, start = saved["silent"], int(saved["step"])
        order_generator.set_state(saved["order"])
    variance = data.var(dim=0).sum().clamp(min=1e-12)
    bar = progress_bar(total=config.steps, initial=start, unit="step", desc="dictionary", enabled=progress)
    for step in range(start, config.steps):
        batch = data[torch.randint(len(data), (config.batch,), generator=order_generator).to(device)]
        dead = silent >= window
        with _deterministic():  # the gathers' backward adds into rows in parallel, in any order, unless told not to
            recon, chosen, aux = sae(batch, dead)
            error = batch - recon
            loss = error.pow(2).sum(dim=1).mean() / variance
            if aux is not None:
                loss = loss + AUX_COEFFICIENT * aux_loss(aux, error.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        with torch.no_grad():
            sae.decoder.data = F.normalize(sae.decoder.data, dim=1)
            fired = torch.zeros(features, dtype=torch.bool, device=device)
            fired[chosen.reshape(-1)] = True
            silent = torch.where(fired, torch.zeros_like(silent), silent + len(batch))
        bar.update(1)
        if (step + 1) % 250 == 0 and step + 1 < config.steps:
            _save(checkpoint, {"sae": sae.state_dict(), "optimizer": optimizer.state_dict(),
                               "schedule": schedule.state_dict(), "silent": silent, "step": step + 1,
                               "order": order_generator.get_state()})
        if poll is not None:
            poll()
    bar.close()
    code = SAECode(sae.encoder.detach().cpu(), sae.encoder_bias.detach().cpu(), sae.decoder.detach().cpu(),
                   sae.decoder_bias.detach().cpu(), scale, k)
    return code, sae_figures(code, rows, held) | {"features": features, "k": k, "steps": config.steps,
                                                   "fit_positions": len(rows), "held_out_positions": len(held)}


def sae_figures(code: SAECode, rows: Tensor, held: Tensor) -> dict:
    """Held-out unexplained variance and active features per position; dead features over every sample."""
    fired = torch.zeros(code.encoder.shape[0], dtype=torch.bool)
    with torch.no_grad():
        for chunk in (*rows.split(8192), *held.split(8192)):
            fired |= (code.sparse(chunk) > 0).any(dim=0)
        errors, active = 0.0, 0.0
        for chunk in held.split(8192):
            sparse = code.sparse(chunk)
            errors += float((chunk - code.reconstruct(sparse)).pow(2).sum())
            active += float((sparse > 0).float().sum())
    return {"unexplained_variance": round(errors / _variance(held), 4),
            "active_per_position": round(active / len(held), 2),
            "dead_fraction": round(1 - float(fired.float().mean()), 4)}


def _reconstruction(code: Code) -> Callable[[Tensor], Tensor]:
    """A layer's post-ReLU output replaced by its reconstruction (clamped at zero, as the ReLU's output is)."""

    def edit(post: Tensor) -> Tensor:
        rows = post.permute(0, 2, 3, 1).reshape(-1, post.shape[1])
        back = code.reconstruct(code.sparse(rows)).clamp(min=0).to(post.dtype)
        return back.reshape(post.shape[0], post.shape[2], post.shape[3], -1).permute(0, 3, 1, 2)

    return edit


@dataclass(frozen=True)
class _Logits:
    """What `evaluate` calls: ``logits`` of RGB images."""

    logits: Callable[[Tensor], Tensor]


def _accuracy(stage: Stage, root: Path, files: Sequence, layer: str | None, code: Code | None) -> dict[str, float]:
    """Top-1/top-5 on the dataset's labelled images, with ``layer`` replaced by ``code``'s reconstruction; {} when
    no image has a class."""
    net = base_network(stage.net)
    if not any(file.label is not None for file in files):
        return {}
    if layer is None:
        scored = evaluate(net, net.spec, root)
        return {"top1": scored.top1, "top5": scored.top5}
    spliced = net.spliced(layer, _reconstruction(code.to(stage.device)))
    scored = evaluate(_Logits(spliced), net.spec, root)  # type: ignore[arg-type]
    return {"spliced_top1": scored.top1, "spliced_top5": scored.top5}


def _mixtures(code: Code, rows: Tensor) -> tuple[Tensor, Tensor]:
    """Per base unit: how many directions put a large weight on it, and the participation ratio of the
    directions' shares of its reconstructed activity over ``rows``."""
    atoms = F.normalize(code.atoms() if isinstance(code, SAECode) else code.components, dim=1)
    counts = (atoms.abs() >= LARGE_WEIGHT).sum(dim=0)
    shares = torch.zeros_like(atoms)
    with torch.no_grad():
        for chunk in rows.split(8192):
            sparse = code.sparse(chunk)
            decoder = code.decoder * code.scale if isinstance(code, SAECode) else code.components
            shares += (sparse.sum(dim=0)[:, None] * decoder).clamp(min=0)
    total = shares.sum(dim=0)
    effective = total.pow(2) / shares.pow(2).sum(dim=0).clamp(min=1e-12)
    return counts, torch.where(total > 0, effective, torch.zeros_like(effective))


def write_factorization(store: Store, spec: ModelSpec, base: LayerSpec, method: str, code: Code, params: dict,
                        figures: dict, mixtures: tuple[Tensor, Tensor]) -> None:
    """The derived layer's rows, its arrays and weights, replacing a previous factorization of the layer and
    everything made from its directions, in one transaction after the arrays are in the blob store."""
    if isinstance(code, NMFCode):
        arrays = {"components": code.components.cpu().numpy()}
        listed = F.normalize(code.components, dim=1).cpu()
    else:
        arrays = {"encoder": code.encoder.cpu().numpy(), "encoder_bias": code.encoder_bias.cpu().numpy(),
                  "decoder": code.decoder.cpu().numpy(), "decoder_bias": code.decoder_bias.cpu().numpy(),
                  "scale": np.float32(code.scale), "k": np.int64(code.k)}
        listed = code.decoder.cpu()
    key = store.blobs.put(arrays_bytes(arrays), "npz")
    store.blobs.flush()
    derived = derived_layer(base, method, listed.shape[0])
    for attempt in store.retrying():
        with attempt, store.transaction() as session:
            model = catalogued_model(session, spec)
            base_row = session.scalar(select(Layer).where(Layer.model_id == model.id, Layer.name == base.name))
            if base_row is None:
                raise MicroscopeError(f"the store has no layer {base.name}: run `microscope precompute catalog` first")
            layer = _derived_row(session, model.id, derived)
            run = start_run(session, "factors", model.id, params, weights_sha256=str(params["weights_sha256"]),
                            seed=int(params["seed"]))
            session.add(Factorization(layer_id=layer.id, base_layer_id=base_row.id, method=method,
                                      components=derived.channels, blob_key=key,
                                      recipe_sha256=str(params["recipe_sha256"]), recipe=params, figures=figures,
                                      run_id=run.id))
            session.flush()
            factorization = session.scalar(select(Factorization).where(Factorization.layer_id == layer.id))
            directions = dict(session.execute(select(Unit.index, Unit.id).where(Unit.layer_id == layer.id)).all())
            units = dict(session.execute(select(Unit.index, Unit.id).where(Unit.layer_id == base_row.id)).all())
            session.execute(DirectionWeight.__table__.insert(), _weight_rows(listed, directions, units, run.id))
            counts, effective = (t.cpu().tolist() for t in mixtures)
            session.execute(UnitMixture.__table__.insert(), [
                {"unit_id": units[unit], "factorization_id": factorization.id, "features": int(counts[unit]),
                 "effective": round(float(effective[unit]), 3), "run_id": run.id}
                for unit in range(len(counts))])
            finish_run(session, run)


def _derived_row(session, model_id: int, derived: LayerSpec) -> Layer:  # noqa: ANN001
    """The derived layer's row with exactly its units, cleared of everything made from older directions."""
    layer = session.scalar(select(Layer).where(Layer.model_id == model_id, Layer.name == derived.name))
    if layer is None:
        position = session.scalar(select(Layer.position).where(Layer.model_id == model_id).order_by(Layer.position.desc()).limit(1))
        layer = Layer(model_id=model_id, name=derived.name, position=(position or 0) + 1, kind=derived.kind,
                      channels=derived.channels, size=derived.size, stride=derived.stride,
                      receptive_field=derived.receptive_field, offset=derived.offset, inputs=list(derived.inputs),
                      previous=None, block=None, skips=layer_skips(derived))
        session.add(layer)
        session.flush()
    else:
        units = select(Unit.id).where(Unit.layer_id == layer.id)
        for table, column in ((DatasetExample, DatasetExample.unit_id), (UnitStats, UnitStats.unit_id),
                              (Artifact, Artifact.unit_id), (UnitTuning, UnitTuning.unit_id),
                              (UnitLabel, UnitLabel.unit_id), (ProbeUnit, ProbeUnit.unit_id),
                              (DirectionWeight, DirectionWeight.direction_id)):
            session.execute(delete(table).where(column.in_(units)))
        old = select(Factorization.id).where(Factorization.layer_id == layer.id)
        session.execute(delete(UnitMixture).where(UnitMixture.factorization_id.in_(old)))
        session.execute(delete(Factorization).where(Factorization.layer_id == layer.id))
        session.execute(delete(Unit).where(Unit.layer_id == layer.id, Unit.index >= derived.channels))
        layer.channels = derived.channels
    present = set(session.scalars(select(Unit.index).where(Unit.layer_id == layer.id)))
    session.add_all(Unit(layer_id=layer.id, index=index) for index in range(derived.channels) if index not in present)
    session.flush()
    return layer


def _weight_rows(listed: Tensor, directions: dict[int, int], units: dict[int, int], run_id: int) -> list[dict]:
    """Each direction's largest weights (by magnitude) and each unit's largest over the directions."""
    count = min(LISTED, listed.shape[1])
    in_direction = listed.abs().topk(count, dim=1).indices.tolist()
    in_unit = listed.abs().topk(min(LISTED, listed.shape[0]), dim=0).indices.T.tolist()
    ranks: dict[tuple[int, int], list[int | None]] = {}
    for direction, chosen in enumerate(in_direction):
        for rank, unit in enumerate(chosen):
            ranks.setdefault((direction, unit), [None, None])[0] = rank
    for unit, chosen in enumerate(in_unit):
        for rank, direction in enumerate(chosen):
            ranks.setdefault((direction, unit), [None, None])[1] = rank
    return [{"direction_id": directions[direction], "unit_id": units[unit],
             "weight": round(float(listed[direction, unit]), 4), "in_direction": first, "in_unit": second,
             "run_id": run_id}
            for (direction, unit), (first, second) in sorted(ranks.items())]


def _checkpoint(store: Store, digest: str) -> Path:
    return store.settings.data_dir / "checkpoints" / f"factors-{digest[:16]}.pt"


def _save(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as handle:
        torch.save(state, handle)
    os.replace(handle.name, path)
