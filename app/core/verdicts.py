"""The randomization test's criterion (issue 30), torch-free: what a method's cascade must show to be called a pass.

Adebayo et al. (2018) re-initialize a network's weights from the top layer down and ask whether an attribution
method's maps change. Their finding is about the whole cascade, not its end: the gradient's maps decorrelate as soon
as the top layers are random, while guided backprop's and guided Grad-CAM's stay alike until the lowest layers are,
because those maps mostly show the image's edges. So a verdict here is read where the difference shows, at the step
that re-initializes the top third of the weight groups (`judged_step`), and against a negative control measured in the
same run:

- **passes** when the upper end of the 95% bootstrap interval of the method's median Spearman correlation (shown maps)
  at that step is below `DECORRELATED` and below the lower end of the control's interval;
- **fails** when the interval's lower end is at or above `DECORRELATED` (it stays alike) or the interval reaches
  into the control's (it cannot be told apart from it);
- **inconclusive** when the interval straddles `DECORRELATED` (more images would narrow it), when most maps at that
  step are degenerate (constant or non-finite: never counted as
  decorrelated), when no control was measured, or when the control decorrelates itself (then the test cannot tell
  methods apart on this model, and no verdict is shown).

`DECORRELATED` is 0.5: on Adebayo et al.'s Inception v3 the gradient falls to about 0.1-0.3 within the top blocks while
the guided methods stay above 0.5 through most of the cascade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: A method's maps count as decorrelated below this median Spearman correlation (the interval's upper end).
DECORRELATED = 0.5
#: The negative control every method is judged against.
CONTROL = "guided_backprop"
#: Methods that are negative controls themselves (Adebayo et al. found both insensitive to the weights).
CONTROLS = ("guided_backprop", "guided_grad_cam")
#: The figure the criterion reads.
FIGURE = "spearman"
#: A step whose maps are degenerate for more than this share of the images gives no figures.
MOSTLY_DEGENERATE = 0.5


def judged_step(groups: int) -> int:
    """The cascade step (1-based) the criterion reads: the one that has re-initialized the top third of the groups."""
    return max(1, math.ceil(groups / 3))


@dataclass(frozen=True)
class Judgement:
    #: True passes, False fails, None inconclusive.
    passes: bool | None
    text: str


def _interval(figure: dict[str, Any]) -> str:
    return f"{figure['median']:.2f} [{figure['low']:.2f}, {figure['high']:.2f}]"


def judge(method: str, steps: list[dict[str, Any]], control: list[dict[str, Any]] | None) -> Judgement:
    """The verdict of ``method``'s cascade ``steps`` (each ``{"depth", "randomized", "figures"}``, top group first)
    against the control's cascade of the same run and target kind (None where it was not measured)."""
    step = steps[judged_step(len(steps)) - 1]
    where = f"with the layers down to {step['randomized']} re-initialized"
    figure = (step["figures"] or {}).get(FIGURE)
    if figure is None:
        return Judgement(None, f"inconclusive: most maps are constant or non-finite {where}")
    said = f"rank correlation {_interval(figure)} {where}"
    if method in CONTROLS:
        if figure["low"] >= DECORRELATED:
            return Judgement(False, f"negative control: stays alike ({said}), as Adebayo et al. found")
        if figure["high"] < DECORRELATED:
            return Judgement(True, f"negative control: decorrelates here ({said}), unlike Adebayo et al.'s finding")
        return Judgement(None, f"negative control, inconclusive: the interval straddles {DECORRELATED} ({said}); "
                               "more images would narrow it")
    against = None if control is None else (control[judged_step(len(control)) - 1]["figures"] or {}).get(FIGURE)
    if against is None:
        return Judgement(None, f"inconclusive: {said}, but no negative control ({CONTROL}) was measured beside it")
    if against["high"] < DECORRELATED:
        return Judgement(None, f"inconclusive: the negative control ({CONTROL}) decorrelates too "
                               f"({_interval(against)}), so this test cannot tell methods apart on this model")
    if figure["high"] < DECORRELATED and figure["high"] < against["low"]:
        return Judgement(True, f"changes when the top layers are randomized ({said}; the control stays at "
                               f"{_interval(against)}): the map depends on the model")
    if figure["low"] >= DECORRELATED or figure["high"] >= against["low"]:
        return Judgement(False, f"barely changes when the top layers are randomized ({said}; the control: "
                                f"{_interval(against)}): treat with care")
    return Judgement(None, f"inconclusive: the interval straddles {DECORRELATED} ({said}); more images would "
                           "narrow it")
