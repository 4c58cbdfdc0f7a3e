"""Directions as units (issue 22): NMF and the dictionary recover known directions; a direction is a unit to every stage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.main import create_app
from app.core.settings import Settings
from app.core.store import DatasetExample, DatasetImage, DirectionWeight, Factorization, Layer, Store, Unit, UnitMixture
from precompute.stages.catalog import catalog
from precompute.stages.examples import input_transform
from precompute.stages.factors import FactorsConfig, run_factors
from precompute.running.images import load_rgb, list_images
from precompute.models import load, seeded_state_dict
from precompute.models.derived import Factored, NMFCode, with_factors
from precompute.optvis.param import PARAMETERIZATIONS
from precompute.optvis.render import render
from precompute.optvis.transform import STANDARD
from precompute.running.context import Stage
from precompute.stages.vis import objective_for
from tests.support.tiny_model import DIRECTIONS, synthetic_images

MODEL = "tests.support.tiny_model:two_directions"
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    path = tmp_path_factory.mktemp("two") / "two.pt"
    torch.save(seeded_state_dict(MODEL, 0), path)
    return load(MODEL, path).net


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_images(tmp_path_factory.mktemp("two-images"), 40, seed=3)


def _truth() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(DIRECTIONS), dim=1)


def _best_cosines(found: torch.Tensor) -> list[float]:
    """For each true direction, the largest cosine with a found one."""
    cosines = _truth() @ torch.nn.functional.normalize(found.float(), dim=1).T
    return cosines.max(dim=1).values.tolist()


def _factored(two, images: Path, tmp_path: Path, **options) -> tuple[Settings, Store, Stage]:  # noqa: ANN001
    settings = Settings.load(tmp_path / "data")
    store = Store.open(settings, create=True)
    catalog(store, two.spec)
    stage = Stage(store, two, "w", CPU, progress=False)
    config = FactorsConfig(layers=(two.spec.layer("mix"),), samples=4000, accuracy=False, examples=8, image_batch=8,
                           **options)
    run_factors(stage, images, config)
    return settings, store, Stage(store, with_factors(store, two, CPU), "w", CPU, progress=False)


def test_nmf_and_the_dictionary_recover_the_layers_two_directions(two, images: Path, tmp_path: Path) -> None:  # noqa: ANN001
    settings, store, stage = _factored(two, images, tmp_path, method="nmf", groups=2)
    stage_sae = None
    try:
        net = stage.net
        assert isinstance(net, Factored) and net.spec.layer("mix_nmf").channels == 2
        assert min(_best_cosines(net.codes["mix_nmf"].components)) >= 0.9
        run_factors(stage, images, FactorsConfig(layers=(two.spec.layer("mix"),), method="sae", expansion=2, k=1,
                                                 samples=4000, steps=1500, batch=256, accuracy=False, examples=8,
                                                 image_batch=8))
        stage_sae = with_factors(store, two, CPU)
        atoms = stage_sae.codes["mix_sae"].decoder
        print(f"best cosines: NMF {_best_cosines(net.codes['mix_nmf'].components)}, dictionary {_best_cosines(atoms)}")
        assert min(_best_cosines(atoms)) >= 0.9
        with store.session() as session:
            figures = dict(session.execute(select(Layer.name, Factorization.figures)
                                           .join(Layer, Factorization.layer_id == Layer.id)).all())
        assert figures["mix_nmf"]["unexplained_variance"] < 0.05 and figures["mix_sae"]["unexplained_variance"] < 0.2
        assert figures["mix_sae"]["active_per_position"] <= 1  # k = 1
    finally:
        store.close()


def test_the_dictionarys_pieces_equal_their_references() -> None:
    """The decoder bias's start is the geometric median (scipy's minimizer of the summed distances agrees); the
    AuxK loss is openai/sparse_autoencoder's ``normalized_mse(aux + b, residual + b)`` in numpy; a feature's
    activation is read after top-k (zero where it was not selected, however large its encoder value); the dead
    fraction counts exactly the features top-k never selects."""
    from scipy.optimize import minimize

    from precompute.stages.factors import aux_loss, geometric_median, sae_figures
    from precompute.models.derived import SAECode

    rng = np.random.default_rng(1)
    rows = np.concatenate([rng.normal(0, 1, (200, 3)), rng.normal(40, 1, (60, 3))])  # outliers pull the mean away
    ours = geometric_median(torch.from_numpy(rows)).numpy()
    theirs = minimize(lambda m: np.linalg.norm(rows - m, axis=1).sum(), rows.mean(axis=0), method="Nelder-Mead",
                      options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 20000}).x
    assert np.allclose(ours, theirs, atol=1e-2) and np.linalg.norm(ours - rows.mean(axis=0)) > 5

    aux, residual, bias = rng.normal(size=(64, 5)), rng.normal(2, 3, size=(64, 5)), rng.normal(size=5)
    target = residual + bias
    reference = ((aux + bias - target) ** 2).mean() / ((target.mean(axis=0) - target) ** 2).mean()
    assert float(aux_loss(torch.from_numpy(aux), torch.from_numpy(residual))) == pytest.approx(reference, rel=1e-9)
    assert float(aux_loss(torch.zeros(4, 5), torch.ones(4, 5))) == 0.0  # a residual that does not vary: no loss

    encoder = torch.tensor([[1.0, 0.0], [0.9, 0.0], [0.0, 1.0], [-1.0, -1.0]])  # feature 3 never wins top-1
    code = SAECode(encoder, torch.zeros(4), torch.eye(2).repeat(2, 1), torch.zeros(2), scale=1.0, k=1)
    post = torch.tensor([[[[2.0]], [[0.5]]]])  # one position: features 0 and 1 both read 2.0 * weight
    activation = code(post)[0, :, 0, 0]
    assert activation.tolist() == [2.0, 0.0, 0.0, 0.0]  # feature 1's encoder value 1.8 is not in the code
    samples = torch.tensor([[2.0, 0.5], [0.1, 3.0], [1.0, 0.2]])
    assert sae_figures(code, samples, samples)["dead_fraction"] == 0.5  # features 1 and 3 are never selected


def test_the_code_is_the_nmf_solution_scikit_learn_finds(two) -> None:  # noqa: ANN001
    from sklearn.decomposition import NMF

    rng = np.random.default_rng(0)
    components = rng.uniform(0, 1, (4, 12)).astype(np.float32)
    rows = (rng.exponential(1, (300, 4)) @ components).astype(np.float32)
    model = NMF(n_components=4, init="custom", max_iter=1000, tol=1e-8)
    model.fit(rows, W=np.full((300, 4), 0.5, np.float32), H=components)  # fitting starts from the truth
    theirs = model.transform(rows)
    code = NMFCode(torch.from_numpy(model.components_.astype(np.float32)))
    ours = code.solve(torch.from_numpy(rows)).numpy()
    error = lambda w: np.linalg.norm(rows - w @ model.components_) / np.linalg.norm(rows)  # noqa: E731
    assert error(ours) <= error(theirs) + 1e-3


def test_a_directions_examples_are_the_positions_where_it_is_strongest(two, images: Path, tmp_path: Path) -> None:  # noqa: ANN001
    settings, store, stage = _factored(two, images, tmp_path, method="nmf", groups=2)
    try:
        with store.session() as session:
            rows = session.execute(
                select(Unit.index, DatasetExample.rank, DatasetExample.activation, DatasetExample.y, DatasetExample.x,
                       DatasetImage.path, DatasetExample.kind)
                .join(Unit, DatasetExample.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
                .join(DatasetImage, DatasetExample.image_id == DatasetImage.id).where(Layer.name == "mix_nmf")
            ).all()
        assert rows and {kind for *_, kind in rows} == {"top"}  # NMF codes are never negative: no bottom examples
        files = {file.path: file for file in list_images(images)}
        transform = input_transform(two.spec)
        maxima = {}
        for path, file in files.items():
            with torch.no_grad():
                codes = stage.net(transform(load_rgb(file))[None], ("mix_nmf",))["mix_nmf"][0]
            maxima[path] = codes
        for unit, rank, activation, y, x, path, _ in rows:
            codes = maxima[path][unit]
            assert codes[y, x].item() == pytest.approx(activation, rel=1e-3, abs=1e-4)
            assert codes.max().item() == pytest.approx(activation, rel=1e-3, abs=1e-4)  # its strongest position
            if rank == 0:  # and no other image has a stronger one
                assert all(other[unit].max().item() <= activation + 1e-4 for other in maxima.values())
    finally:
        store.close()


def test_a_directions_render_increases_its_objective(two, images: Path, tmp_path: Path) -> None:  # noqa: ANN001
    settings, store, stage = _factored(two, images, tmp_path, method="nmf", groups=2)
    try:
        layer = stage.spec.layer("mix_nmf")
        vectors = stage.net.direction_vectors("mix_nmf", [0, 1])
        objective = objective_for("channel", layer, [0, 1], "mix", vectors)
        assert objective.layers == {"mix"}  # Lucid's direction objective, on the base layer
        scores = [render(stage.net, objective, PARAMETERIZATIONS["fourier"](32), [1, 2], STANDARD, steps=steps,
                         device=CPU).objective for steps in (1, 24)]
        assert (scores[1] > scores[0]).all(), scores
    finally:
        store.close()


def test_a_new_factorization_replaces_the_old_and_what_was_made_from_it(two, images: Path, tmp_path: Path) -> None:  # noqa: ANN001
    settings, store, stage = _factored(two, images, tmp_path, method="nmf", groups=2)
    try:
        run_factors(stage, images, FactorsConfig(layers=(two.spec.layer("mix"),), method="nmf", groups=3,
                                                 samples=4000, accuracy=False, examples=8, image_batch=8))
        with store.session() as session:
            layer = session.scalar(select(Layer).where(Layer.name == "mix_nmf"))
            units = session.scalars(select(Unit.index).where(Unit.layer_id == layer.id)).all()
            factorizations = session.scalar(select(func.count()).select_from(Factorization))
            examples = session.execute(select(Unit.index, func.count()).select_from(DatasetExample)
                                       .join(Unit, DatasetExample.unit_id == Unit.id)
                                       .where(Unit.layer_id == layer.id).group_by(Unit.index)).all()
            weights = session.scalar(select(func.count()).select_from(DirectionWeight))
            mixtures = session.scalar(select(func.count()).select_from(UnitMixture))
        assert (layer.channels, sorted(units), factorizations) == (3, [0, 1, 2], 1)
        assert sorted(index for index, _ in examples) == [0, 1, 2]
        assert weights == 3 * 8 and mixtures == 8  # one set of weights and mixtures: the new factorization's
    finally:
        store.close()


def test_the_reconstruction_is_scored_by_the_network_with_the_layer_spliced(two, images: Path, tmp_path: Path) -> None:  # noqa: ANN001
    labelled = tmp_path / "labelled"
    for number, file in enumerate(list_images(images)[:20]):
        target = labelled / two.spec.classes[number % 10].synset / Path(file.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(file.full_path, target)
    x = torch.rand(2, 3, two.spec.input_size, two.spec.input_size)
    with torch.no_grad():
        assert torch.allclose(two.spliced("mix", lambda a: a)(x), two.logits(x))
        assert not torch.allclose(two.spliced("mix", torch.zeros_like)(x), two.logits(x))
    settings = Settings.load(tmp_path / "data")
    with Store.open(settings, create=True) as store:
        catalog(store, two.spec)
        result = run_factors(Stage(store, two, "w", CPU, progress=False), labelled,
                             FactorsConfig(layers=(two.spec.layer("mix"),), method="nmf", groups=2, samples=2000,
                                           examples=4, image_batch=8))
    figures = result.figures["mix_nmf"]
    # Two groups reconstruct the layer almost exactly, so the network decides as it did.
    assert figures["spliced_top1"] == pytest.approx(figures["original_top1"], abs=0.051)
    assert {"original_top5", "spliced_top5"} <= set(figures)


def test_directions_have_pages_and_json_twins_and_a_unit_lists_the_directions_it_is_part_of(
        two, images: Path, tmp_path: Path) -> None:  # noqa: ANN001
    settings, store, stage = _factored(two, images, tmp_path, method="nmf", groups=2)
    store.close()
    client = TestClient(create_app(settings))
    model = two.spec.name
    layer = client.get(f"/models/{model}/mix_nmf.json").json()
    assert layer["kind"] == "nmf" and layer["factorization"]["base"] == "mix" and len(layer["units"]) == 2
    assert client.get(f"/models/{model}/mix_nmf").status_code == 200
    unit = client.get(f"/models/{model}/mix_nmf/0.json").json()
    assert unit["factorization"]["figures"]["unexplained_variance"] < 0.05
    made_of = unit["made_of"]
    assert made_of and all(item["unit"]["layer"] == "mix" for item in made_of)
    assert abs(made_of[0]["weight"]) >= abs(made_of[-1]["weight"])
    page = client.get(f"/models/{model}/mix_nmf/0")
    assert page.status_code == 200 and "Made of" in page.text and made_of[0]["unit"]["url"] in page.text
    assert client.get(unit["factorization"]["arrays_url"]).status_code == 200
    base = client.get(f"/models/{model}/mix/0.json").json()
    part = base["part_of"][0]
    assert part["layer"] == "mix_nmf" and part["features"] >= 1 and part["effective"] >= 1
    assert all(item["unit"]["layer"] == "mix_nmf" for item in part["directions"])
    assert "Directions it takes part in" in client.get(f"/models/{model}/mix/0").text
    assert client.get(f"/models/{model}/mix.json").json()["derived"][0]["name"] == "mix_nmf"
    assert client.get(f"/models/{model}/mix_nmf/2.json").status_code == 404
    found = client.get("/search?q=mix_nmf:1", follow_redirects=False)  # searched like a neuron
    assert found.status_code == 303 and found.headers["location"].endswith(f"/models/{model}/mix_nmf/1")


def test_the_hand_written_inceptionv1_splices_a_layer_as_a_traced_network_does() -> None:
    from precompute.models import build

    net = build("inceptionv1_caffe").eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        logits = net.logits(x)
        assert torch.allclose(net.spliced("mixed3b", lambda a: a)(x), logits)
        assert not torch.allclose(net.spliced("mixed3b", torch.zeros_like)(x), logits)


def test_a_block_diagonal_layer_clusters_into_its_blocks_and_better_than_its_shuffles(tmp_path: Path) -> None:
    from app.core.store import LayerModules
    from precompute.stages.modules import ModulesConfig, clusterability, run_modules, run_network_modules

    path = tmp_path / "blocks.pt"
    torch.save(seeded_state_dict("tests.support.tiny_model:blocks", 0), path)
    net = load("tests.support.tiny_model:blocks", path).net
    settings = Settings.load(tmp_path / "data")
    with Store.open(settings, create=True) as store:
        catalog(store, net.spec)
        stage = Stage(store, net, "w", CPU, progress=False)
        result = run_modules(stage, ModulesConfig(layers=(net.spec.layer("second"),), modules=2, shuffles=10))
        again = run_modules(stage, ModulesConfig(layers=(net.spec.layer("second"),), modules=2, shuffles=10))
        whole = run_network_modules(stage, ModulesConfig(layers=(), modules=2, shuffles=10))
        assert run_network_modules(stage, ModulesConfig(layers=(), modules=2, shuffles=10)) is None  # stored: reused
        with store.session() as session:
            row = session.scalar(select(LayerModules))
    assert (result.pairs_clustered, again.pairs_clustered, again.pairs_reused) == (1, 0, 1)
    assert row.ncut == pytest.approx(0, abs=1e-6) and min(row.shuffled) > 0.1 and row.better == 0
    assert row.verdict == "modular" and row.control_ncut > 0.1 and row.z < -3
    groups = sorted(sorted(module["units"]["second"]) for module in row.modules)
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the grouped convolution's two halves
    assert all(module["inside"] == pytest.approx(1) for module in row.modules)
    client = TestClient(create_app(settings))
    for name in ("first", "second"):  # both layers show the pair's modules
        section = client.get(f"/models/{net.spec.name}/{name}.json").json()["modules"][0]
        assert (section["source"], section["target"], section["ncut"]) == ("first", "second", row.ncut)
        assert len(section["modules"]) == 2 and section["modules"][0]["total"] == 8  # 4 + 4 units of the two layers
    assert "Modules of" in client.get(f"/models/{net.spec.name}/second").text
    modularity = client.get(f"/models/{net.spec.name}.json").json()["modularity"]
    assert modularity["verdict"] == whole["verdict"] and modularity["shuffles"] == 10
    assert "Is it modular?" in client.get(f"/models/{net.spec.name}").text
    rng = np.random.default_rng(0)
    dense = rng.uniform(0, 1, (8, 8))
    _, ncut, shuffled = clusterability(dense, 2, 10, 0)
    assert abs(ncut - float(np.mean(shuffled))) < 0.25  # a dense random layer is no more modular than its shuffles


def test_filans_protocol_tells_modular_from_merely_smooth_and_from_random() -> None:
    """Three networks of four 24-unit layers: one made of three blocks (modular), one whose units lie on rings with
    weights falling with the angle between them (smooth: it beats its shuffles, as Filan et al.'s test alone would
    call clusterable, but it cuts no lower than its smooth control), and one of random weights."""
    from precompute.stages.modules import filan, smooth_control

    rng = np.random.default_rng(0)
    blocks = np.kron(np.eye(3), np.ones((8, 8)))
    modular = [blocks * rng.uniform(0.5, 1.5, blocks.shape) + 0.01 * rng.uniform(0, 1, blocks.shape) for _ in range(3)]
    angle = 2 * np.pi * np.arange(24) / 24
    ring = np.exp(3 * np.cos(angle[:, None] - angle[None, :]))
    smooth = [ring * rng.uniform(0.9, 1.1, ring.shape) for _ in range(3)]
    found = {name: filan(net, 3, 100, 0) for name, net in
             (("modular", modular), ("smooth", smooth), ("random", [rng.uniform(0, 1, (24, 24)) for _ in range(3)]))}
    assert found["modular"].verdict == "modular" and found["modular"].percentile == 0 and found["modular"].z < -10
    assert found["smooth"].percentile == 0 and found["smooth"].verdict == "clusterable", found["smooth"]
    assert found["random"].verdict == "not clusterable" and found["random"].percentile > 0.01
    assert len(found["modular"].shuffled) == 100
    # The control keeps every weight value and moves it by rank only.
    control = smooth_control(modular)
    assert all(np.allclose(np.sort(c.ravel()), np.sort(m.ravel())) for c, m in zip(control, modular))


def test_two_copies_match_unit_to_unit_and_a_permuted_copy_recovers_the_permutation(images: Path, tmp_path: Path) -> None:
    import json

    from app.core.store import UnitMatch
    from precompute.stages.match import run_match

    state = seeded_state_dict("tests.support.tiny_model:blocks", 0)
    path = tmp_path / "blocks.pt"
    torch.save(state, path)
    # The copy's first layer has its units permuted within each of the second layer's two groups (and the
    # second layer reads them in that order): the same function, its units in another order.
    permutation = [2, 0, 3, 1, 7, 5, 4, 6]
    permuted = dict(state)
    first_weight = next(key for key in state if key.endswith("first.weight"))
    second_weight = next(key for key in state if key.endswith("second.weight"))
    permuted[first_weight] = state[first_weight][permutation]
    permuted[first_weight.replace("weight", "bias")] = state[first_weight.replace("weight", "bias")][permutation]
    within = [p % 4 for p in permutation]
    second = state[second_weight].clone()
    second[:4] = state[second_weight][:4][:, within[:4]]
    second[4:] = state[second_weight][4:][:, within[4:]]
    permuted[second_weight] = second
    copy = tmp_path / "copy.pt"
    torch.save(permuted, copy)
    named = tmp_path / "names.json"
    named.write_text(json.dumps({"name": "blocks-copy"}))
    a = load("tests.support.tiny_model:blocks", path).net
    b = load("tests.support.tiny_model:blocks", copy, named).net
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(a.logits(x), b.logits(x), atol=1e-5)
    settings = Settings.load(tmp_path / "data")
    with Store.open(settings, create=True) as store:
        catalog(store, a.spec)
        catalog(store, b.spec)
        result = run_match(store, (a, b), ("wa", "wb"), images, CPU, progress=False)
        with store.session() as session:
            names = {unit_id: (model, layer, index) for unit_id, model, layer, index in session.execute(
                select(Unit.id, Layer.model_id, Layer.name, Unit.index).join(Layer, Unit.layer_id == Layer.id))}
            first_model = session.scalar(select(Layer.model_id).where(Layer.name == "first").order_by(Layer.id))
            best = {names[u]: (names[o][1:], c) for u, o, c in session.execute(
                select(UnitMatch.unit_id, UnitMatch.other_id, UnitMatch.correlation).where(UnitMatch.rank == 0))}
    assert result.matched["second"] == 1.0
    # Against the permutation null: every unit's best match is above its layer's 99th percentile, both ways of
    # correlating; the stored matches carry the position-wise figure and the thresholds reach the page.
    for layer in ("first", "second"):
        for kind in ("pooled", "positionwise"):
            figures = result.null[layer][kind]
            assert figures["above"] == 1.0 and figures["threshold"] < 0.9, (layer, kind, figures)
    for unit in range(8):
        (layer, index), correlation = best[first_model, "second", unit]
        assert (layer, index) == ("second", unit) and correlation == pytest.approx(1, abs=1e-3)
        (layer, index), correlation = best[first_model, "first", permutation[unit]]
        assert (layer, index) == ("first", unit) and correlation == pytest.approx(1, abs=1e-3)
    client = TestClient(create_app(settings))
    page = client.get(f"/models/{a.spec.name}/second/3.json").json()
    assert page["matches"][0]["unit"]["model"] == "blocks-copy" and page["matches"][0]["unit"]["index"] == 3
    best_match = page["matches"][0]
    assert best_match["positionwise"] == pytest.approx(1, abs=1e-3) and best_match["above_chance"] is True
    assert best_match["threshold"] == result.null["second"]["pooled"]["threshold"]
    assert "Nearest units in other models" in client.get(f"/models/{a.spec.name}/second/3").text


def test_a_random_copys_batchnorm_statistics_are_those_of_the_images(images: Path, tmp_path: Path) -> None:
    """`reestimate_batchnorm`: every BatchNorm's running mean and variance become those of its input over the images
    (one cumulative pass), as a trained network's would be, not the initializer's 0 and 1."""
    from precompute.stages.match import reestimate_batchnorm
    from tests.support.tiny_model import write_weights

    write_weights(tmp_path / "tiny.pt", seed=3)
    net = load("tests.support.tiny_model:tiny", tmp_path / "tiny.pt").net
    norm = net.module.stem[1]
    with torch.no_grad():
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0)
    seen = []
    handle = norm.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach().clone()))
    reestimate_batchnorm(net, images, CPU)
    handle.remove()
    values = torch.cat(seen[1:]).transpose(0, 1).flatten(1)  # channels x (images * positions); [0]: its warm-up
    assert torch.allclose(norm.running_mean, values.mean(dim=1), rtol=1e-4, atol=1e-6)
    assert torch.allclose(norm.running_var, values.var(dim=1), rtol=0.1)  # the batches' variances averaged (no between-batch part)
    assert not norm.training and not net.training


def test_the_universality_null_is_chance_for_unrelated_units() -> None:
    """Units of two independent random models: their best matches sit at the null's level (about 1% above its 99th
    percentile); units that are noisy copies of the first model's stand far above it, pooled and position-wise."""
    from precompute.stages.match import above_null, correlations, null_maxima, positionwise

    generator = torch.Generator().manual_seed(0)
    first = {"a": torch.rand(300, 16, 40, generator=generator)}
    unrelated = {"b": torch.rand(300, 16, 30, generator=generator)}
    copies = {"b": first["a"][:, :, :30] + 0.3 * torch.rand(300, 16, 30, generator=generator)}
    pooled_first = {"a": first["a"].mean(dim=1)}
    for other, expect in ((unrelated, "chance"), (copies, "copies")):
        pooled_other = {"b": other["b"].mean(dim=1)}
        corr, names, _ = correlations(pooled_first, pooled_other)
        null = above_null(corr.max(dim=1).values, null_maxima(pooled_first, pooled_other, 20), names)["a"]
        spatial = above_null(positionwise(first, other).max(dim=1).values, null_maxima(first, other, 20), names)["a"]
        if expect == "chance":
            assert null["above"] <= 0.1 and spatial["above"] <= 0.1, (null, spatial)
        else:
            assert null["above"] >= 0.7 and spatial["above"] >= 0.7 and spatial["threshold"] < 0.1, (null, spatial)


def test_a_probes_neuron_groups_recover_the_directions_and_where_they_are() -> None:
    """Building Blocks' per-image groups: an image whose left half holds one direction and right half another."""
    from precompute.live.probe import neuron_groups

    generator = torch.Generator().manual_seed(3)
    first, second = torch.rand(12, generator=generator), torch.rand(12, generator=generator)
    first[6:], second[:6] = 0, 0  # non-negative and apart, as NMF's groups are meant to be
    strength = torch.rand(8, 8, generator=generator) + 0.5
    values = torch.zeros(12, 8, 8)
    values[:, :, :4] = first[:, None, None] * strength[None, :, :4] * 2  # the left half: twice the activity
    values[:, :, 4:] = second[:, None, None] * strength[None, :, 4:]
    maps, vectors, shares, fvu = neuron_groups(values, count=2)
    assert vectors.shape == (2, 12) and maps.shape == (2, 8, 8) and fvu < 1e-3
    truth = [(first / first.norm()).numpy(), (second / second.norm()).numpy()]
    left = int(np.argmax(vectors @ truth[0]))  # groups come largest share first: find each
    right = 1 - left
    assert float(vectors[left] @ truth[0]) > 0.99 and float(vectors[right] @ truth[1]) > 0.99
    # A group's share is its part of the reconstruction's total: here the activity in its half of the image.
    expected = float(values[:, :, :4].sum() / values.sum())
    assert shares[left] == pytest.approx(expected, abs=1e-3) and shares[right] == pytest.approx(1 - expected, abs=1e-3)
    assert shares[0] >= shares[1]  # largest first
    assert maps[left][:, 4:].max() < 1e-3 * maps[left].max() and maps[right][:, :4].max() < 1e-3 * maps[right].max()
    assert neuron_groups(torch.zeros(12, 8, 8))[1].shape == (0, 12)  # nothing active: no groups
    assert neuron_groups(-values)[1].shape == (0, 12)  # below zero everywhere: nothing after the ReLU
