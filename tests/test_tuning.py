"""The tuning stage: stimuli drawn where they should be, hand-written detectors tuned to what they detect."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import select

from app.core.settings import Settings
from app.core.stimuli import FAMILIES, Placement, draw
from app.core.store import Store, Unit, UnitTuning
from app.core.zoo import get_model
from precompute.stages.catalog import catalog
from precompute.models import load
from precompute.running.context import Stage
from precompute.stages.tuning import (ROTATIONS, TuningConfig, family_figures, half_width, joint_responses, placement,
                               responses, resultant, run_tuning)

DETECTORS = "tests.support.tiny_model:detectors"
SIDE = 15
CURVE_RADIUS = 0.5  # receptive fields


def _kernel_grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel offsets from the kernel's centre, x right and y up (the stimuli's convention)."""
    ys, xs = np.mgrid[0:SIDE, 0:SIDE].astype(np.float64)
    return xs - SIDE // 2, SIDE // 2 - ys


def _zero_mean(kernel: np.ndarray) -> np.ndarray:
    return kernel - kernel.mean()


def _edge(direction: float) -> np.ndarray:
    """Positive on the side ``direction`` degrees points to, negative behind: an edge detector."""
    x, y = _kernel_grid()
    along = x * math.cos(math.radians(direction)) + y * math.sin(math.radians(direction))
    return np.tanh(along / 1.5)


def _line(orientation: float) -> np.ndarray:
    x, y = _kernel_grid()
    distance = np.abs(x * math.sin(math.radians(orientation)) - y * math.cos(math.radians(orientation)))
    return _zero_mean((distance < 1.2).astype(float))


def _curve(orientation: float, radius: float) -> np.ndarray:
    """A light arc of the circle whose centre lies ``radius`` behind the kernel's centre (``orientation``)."""
    x, y = _kernel_grid()
    theta = math.radians(orientation)
    vx, vy = x + radius * math.cos(theta), y + radius * math.sin(theta)
    ring = np.abs(np.hypot(vx, vy) - radius) < 1.2
    facing = (vx * math.cos(theta) + vy * math.sin(theta)) > 0  # the half of the circle the arc is on
    return _zero_mean((ring & facing).astype(float))


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The detectors model with hand-written kernels: edge at 0 degrees, edge at 90, line at 45, curve at 90."""
    from precompute.models import seeded_state_dict

    state = seeded_state_dict(DETECTORS, 0)
    kernels = [_edge(0), _edge(90), _line(45), _curve(90, CURVE_RADIUS * SIDE)]
    weight = torch.tensor(np.stack([np.stack([k] * 3) for k in kernels]), dtype=torch.float32)
    key = next(name for name in state if name.endswith("detect.weight"))
    state[key] = weight
    state[key.replace("weight", "bias")] = torch.zeros(len(kernels))
    path = tmp_path_factory.mktemp("detectors") / "detectors.pt"
    torch.save(state, path)
    return load(DETECTORS, path).net


def test_stimuli_are_centred_on_the_receptive_field_of_a_corner_position() -> None:
    spec = get_model("inceptionv1_caffe")
    layer = spec.layer("mixed3a")
    where = placement(spec, layer)
    for y, x in ((0, 0), (layer.size - 1, layer.size - 1), (0, layer.size - 1)):
        centre_x, centre_y = layer.offset + x * layer.stride, layer.offset + y * layer.stride
        pad = layer.receptive_field
        # Drawn on a canvas big enough to hold the whole disk, the stimulus' centre of mass is the field's centre
        # and the same stimulus drawn on the input is that canvas' crop.
        colour = FAMILIES["colours"]
        big = draw(colour, colour.params()[:1], where, canvas=spec.input_size + 2 * pad,
                   centre=(centre_x + pad, centre_y + pad))[0]
        weight = np.abs(big - 0.5).sum(axis=2)
        ys, xs = np.nonzero(weight)
        assert np.average(xs, weights=weight[ys, xs]) - pad == pytest.approx(centre_x, abs=0.05)
        assert np.average(ys, weights=weight[ys, xs]) - pad == pytest.approx(centre_y, abs=0.05)
        assert 2 * xs.min() <= 2 * (centre_x + pad) - layer.receptive_field + 2
        small = draw(colour, colour.params()[:1], where, canvas=spec.input_size, centre=(centre_x, centre_y))[0]
        np.testing.assert_allclose(small, big[pad:pad + spec.input_size, pad:pad + spec.input_size], atol=1e-6)
    # The stage's own placement: the position read is the one whose field the stimuli are centred on.
    assert where.centre == layer.offset + where.position * layer.stride
    assert where.canvas <= spec.input_size and where.field == layer.receptive_field


def test_placement_clips_fields_wider_than_the_input() -> None:
    spec = get_model("inceptionv1_caffe")
    where = placement(spec, spec.layer("mixed5b"))
    assert where.canvas == spec.input_size and where.field == spec.input_size
    assert abs(where.centre - spec.input_size / 2) <= spec.layer("mixed5b").stride


def test_curves_follow_the_stated_convention() -> None:
    """A curve of orientation 90 is an arc whose midpoint is the centre and whose circle lies below it (y up)."""
    where = Placement(canvas=41, position=20, centre=20.0, field=41.0, stroke=1.5)
    arc = draw(FAMILIES["curves"], [{"orientation": 90.0, "radius": 0.25, "polarity": 1.0}], where)[0, ..., 0]
    rows, columns = np.nonzero(arc > 0.75)
    assert arc[20, 20] > 0.9  # the midpoint
    assert rows.max() > 22 and rows.min() >= 19  # the arc bends down from the midpoint: image rows grow downwards
    assert abs(columns.mean() - 20) < 0.5
    line = draw(FAMILIES["lines"], [{"orientation": 45.0, "polarity": -1.0}], where)[0, ..., 0]
    assert line[10, 30] < 0.1 and line[30, 10] < 0.1 and line[10, 10] == pytest.approx(0.5)  # up and to the right
    edge = draw(FAMILIES["edges"], [{"orientation": 0.0}], where)[0, ..., 0]
    assert edge[20, 30] > 0.9 and edge[20, 10] < 0.1  # dark to light along +x


def test_hand_written_detectors_prefer_what_they_detect(detectors) -> None:  # noqa: ANN001
    spec, cpu = detectors.spec, torch.device("cpu")
    layer = spec.layer("detect")
    edges = responses(detectors, spec, layer, FAMILIES["edges"], cpu)
    assert FAMILIES["edges"].angle.values[int(edges[:, 0].argmax())] == 0
    assert FAMILIES["edges"].angle.values[int(edges[:, 1].argmax())] == 90
    lines = responses(detectors, spec, layer, FAMILIES["lines"], cpu)
    figures = family_figures(FAMILIES["lines"], lines[..., 2], top=None)
    assert figures["preferred"] == {"orientation": 45.0, "polarity": 1.0}
    curves = responses(detectors, spec, layer, FAMILIES["curves"], cpu)
    curve = family_figures(FAMILIES["curves"], curves[..., 3], top=None, lines=lines[..., 3])
    assert curve["preferred"]["orientation"] == 90 and curve["preferred"]["radius"] == CURVE_RADIUS
    assert curve["preferred"]["polarity"] == 1.0
    assert curve["figures"]["curve_over_line"] > 1  # it answers its curve more than any line
    # The edge detector's orientation tuning is sharp and one-sided: a resultant length well above a flat curve's.
    edge = family_figures(FAMILIES["edges"], edges[:, 0], top=None)
    assert edge["figures"]["resultant_length"] > 0.5 and edge["figures"]["half_width"] < 90
    assert edge["selectivity"] > family_figures(FAMILIES["edges"], edges[:, 2], top=None)["selectivity"]


def _curve_example(spec, layer) -> torch.Tensor:  # noqa: ANN001
    """A curve detector's "top example": a photo-sized image with a curve facing 90 degrees at (x 60, y 50)."""
    image = draw(FAMILIES["curves"], [{"orientation": 90.0, "radius": CURVE_RADIUS, "polarity": 1.0}],
                 placement(spec, layer), canvas=spec.input_size, centre=(60.0, 50.0))[0]
    return torch.from_numpy(image).permute(2, 0, 1)


def test_joint_tuning_of_a_curve_detector_peaks_unrotated(detectors) -> None:  # noqa: ANN001
    spec, cpu = detectors.spec, torch.device("cpu")
    layer = spec.layer("detect")
    curve = joint_responses(detectors, spec, layer, [(3, _curve_example(spec, layer), 50, 60)], cpu)[3]
    assert len(curve) == len(ROTATIONS) and int(curve.argmax()) == 0
    assert curve[0] > curve[len(ROTATIONS) // 2]  # upside down, it no longer fits


def test_the_curve_family_answers_rotations_of_one_units_examples_as_curve_detectors_defines_it(
        tmp_path: Path) -> None:
    """A hand-built family of four curve detectors facing 0, 90, 180 and 270 degrees: rotating the 90-degree unit's
    example by r makes the unit facing 90 + r answer most (Curve Detectors' joint tuning of the family). The curve
    selectivity, read from the curves alone, ranks them above a line detector, which gets none."""
    from precompute.models import seeded_state_dict
    from precompute.stages.tuning import family_joint_responses

    state = seeded_state_dict(DETECTORS, 0)
    kernels = [_curve(angle, CURVE_RADIUS * SIDE) for angle in (0, 90, 180, 270)]
    key = next(name for name in state if name.endswith("detect.weight"))
    state[key] = torch.tensor(np.stack([np.stack([k] * 3) for k in kernels]), dtype=torch.float32)
    state[key.replace("weight", "bias")] = torch.zeros(4)
    torch.save(state, tmp_path / "family.pt")
    family = load(DETECTORS, tmp_path / "family.pt").net
    spec, cpu = family.spec, torch.device("cpu")
    layer = spec.layer("detect")
    curves = family_joint_responses(family, spec, layer, 1, [(_curve_example(spec, layer), 50, 60)], [0, 1, 2, 3], cpu)
    for member, facing in enumerate((0, 90, 180, 270)):
        assert ROTATIONS[int(curves[member].argmax())] == (facing - 90) % 360, (member, curves[member])
    lines = responses(family, spec, layer, FAMILIES["lines"], cpu)
    bent = responses(family, spec, layer, FAMILIES["curves"], cpu)
    scores = [family_figures(FAMILIES["curves"], bent[..., u], top=None, lines=lines[..., u]) for u in range(4)]
    assert [s["preferred"]["orientation"] for s in scores] == [0, 90, 180, 270]
    assert all(s["selectivity"] == s["figures"]["osi"] > 0.5 for s in scores), [(s["selectivity"], s["figures"]) for s in scores]


def test_a_line_detector_is_no_curve_detector(detectors) -> None:  # noqa: ANN001
    spec, cpu = detectors.spec, torch.device("cpu")
    layer = spec.layer("detect")
    lines = responses(detectors, spec, layer, FAMILIES["lines"], cpu)
    curves = responses(detectors, spec, layer, FAMILIES["curves"], cpu)
    scores = [family_figures(FAMILIES["curves"], curves[..., u], top=None, lines=lines[..., u])["selectivity"]
              for u in range(4)]
    assert scores[2] == 0 and scores[3] == max(scores) > 0.5, scores  # the line at 45 degrees; the curve at 90


def test_figures() -> None:
    from precompute.stages.tuning import orientation_selectivity

    angles = np.arange(0, 360, 15.0)
    two_lobes = np.maximum(np.cos(np.radians(2 * (angles - 30))), 0)  # peaks at 30 and 210, silent at 120 and 300
    assert orientation_selectivity(two_lobes, angles) == pytest.approx(1) and resultant(two_lobes, angles, 360) < 0.05
    assert orientation_selectivity(np.ones(24), angles) == 0
    half = 1 + 0 * angles
    half[angles == 90] = 3  # 3 at the preference, 1 orthogonally: (3 - 1) / (3 + 1)
    assert orientation_selectivity(half, angles) == pytest.approx(0.5)
    flat = np.ones(24)
    assert resultant(flat, angles, 360) == pytest.approx(0, abs=1e-9) and half_width(flat, 15) is None
    peaked = np.maximum(np.cos(np.radians(angles - 90)), 0)
    assert resultant(peaked, angles, 360) > 0.7
    assert half_width(peaked, 15) == pytest.approx(60, abs=1)
    # Orientations (period 180): 0 and 180 degrees are the same orientation.
    assert resultant(np.array([1.0, 0, 0, 0, 0, 0]), np.arange(0, 180, 30.0), 180) == pytest.approx(1)


def test_the_stage_stores_every_unit_and_reuses_its_recipe(detectors, tmp_path: Path) -> None:  # noqa: ANN001
    spec = detectors.spec
    with Store.open(Settings.load(tmp_path), create=True) as store:
        catalog(store, spec)
        stage = Stage(store, detectors, "w", torch.device("cpu"), progress=False)
        config = TuningConfig(layers=(spec.layer("detect"),), families=("lines", "edges", "curves"))
        first = run_tuning(stage, config)
        again = run_tuning(stage, config)
        assert (first.layers_tuned, first.units, again.layers_tuned, again.layers_reused) == (1, 4, 0, 1)
        with store.session() as session:
            rows = session.execute(select(Unit.index, UnitTuning.family, UnitTuning.preferred, UnitTuning.responses)
                                   .join(Unit, Unit.id == UnitTuning.unit_id)).all()
        assert len(rows) == 4 * 3
        by = {(index, family): (preferred, values) for index, family, preferred, values in rows}
        assert by[0, "edges"][0] == {"orientation": 0.0}
        assert by[3, "curves"][0]["orientation"] == 90.0 and by[3, "curves"][0]["radius"] == CURVE_RADIUS
        assert np.asarray(by[3, "curves"][1]).shape == FAMILIES["curves"].shape
        other = run_tuning(stage.part((1, 2)), config)  # shard 1 of 2 of one layer: nothing to do
        assert other.layers_tuned == other.layers_reused == 0


def test_a_block_outputs_units_are_tuned_on_their_branchs_field() -> None:
    from precompute.stages.tuning import field_groups

    spec = get_model("inceptionv1_caffe")
    groups = field_groups(spec, spec.layer("mixed3b"))
    assert [(g.units.start, g.units.stop, g.geometry.name, g.placement.field) for g in groups] == [
        (0, 128, "mixed3b_1x1", 59), (128, 320, "mixed3b_3x3", 75), (320, 416, "mixed3b_5x5", 91),
        (416, 480, "mixed3b_pool_reduce", 75)]
    assert all(g.placement.centre == spec.layer("mixed3b").offset + g.placement.position * 8 for g in groups)
    assert [g.geometry.name for g in field_groups(spec, spec.layer("conv2d2"))] == ["conv2d2"]


def test_a_store_whose_images_are_gone_is_tuned_without_joint_tuning(tiny_settings: Settings, tiny_net,  # noqa: ANN001
                                                                    tmp_path: Path) -> None:
    from sqlalchemy import delete, update

    from app.core.store import Dataset, Run
    from tests.support.live import copy_store

    settings = copy_store(tiny_settings, tmp_path / "store")
    with Store.open(settings) as store:
        with store.transaction() as session:
            assert session.scalar(select(UnitTuning.id).where(UnitTuning.family == "joint").limit(1))  # precompute all's
            session.execute(delete(UnitTuning))
            session.execute(delete(Run).where(Run.stage == "tuning"))
            session.execute(update(Dataset).values(root=str(tmp_path / "moved away")))
        stage = Stage(store, tiny_net, "w", torch.device("cpu"), progress=False)
        result = run_tuning(stage, TuningConfig(layers=(tiny_net.spec.layer("stem_0"),), families=("lines", "joint")))
        assert result.layers_tuned == 1 and any("cannot be read" in note for note in result.notes)
        with store.session() as session:
            families = set(session.scalars(select(UnitTuning.family)))
            recipe = session.scalars(select(Run.params).where(Run.stage == "tuning")).one()
        assert families == {"lines"} and "joint" not in recipe  # the recipe says what was computed
