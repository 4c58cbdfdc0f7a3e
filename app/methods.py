"""The methods page (issue 30): each method the microscope uses, its reference (paper and code), its parameters, where
it differs from the reference and why, and the test that checks it against the reference. Torch-free data; a test
checks that every named test exists, so an entry cannot point at a test that was renamed away.
"""

from __future__ import annotations

from app import urls
from app.page_types import MethodEntry, MethodsPage

METHODS: tuple[MethodEntry, ...] = (
    MethodEntry(
        "feature-visualization", "Feature visualization",
        "Olah et al. 2017, Feature Visualization (Distill)", "tensorflow/lucid: lucid/optvis (render, param, transform, "
        "objectives)",
        "Fourier parameterization with decorrelated colour, Adam at 0.05, Lucid's standard transforms (pad 12, jitter 8, "
        "scale 0.9-1.1, rotate ±10°, jitter 4), 512 steps at 128 px by default; channel, neuron, direction, DeepDream and "
        "diversity objectives; every recipe stored with its image.",
        "The transforms are one fused affine resampling per step (Lucid composes five); the pad's grey is read where a "
        "rotation reaches past it. Lucid's redirected ReLU gradient applies at every ReLU and for the first 17 steps only "
        "(its global_step <= 16), as in lucid/misc/redirected_relu_grad.py. Networks under 224 px (Lucid's transforms "
        "are written for InceptionV1's 224) get the pad and jitters scaled by their input side over 224 and an image whose "
        "canvas is their input side; a network that flattens a fixed-size map gets its canvas cropped or padded to its "
        "input side; a 1-channel network's image is one gray channel with no colour decorrelation (Lucent's "
        "param.image(channels=1)). Each recipe's sizing says so.",
        ("tests/test_optvis.py::test_diversity_is_lucids_objective",
         "tests/test_optvis.py::test_the_redirect_applies_where_and_when_lucid_applies_it",
         "tests/test_own_models.py::test_renders_are_sized_to_the_network")),
    MethodEntry(
        "attribution", "Attribution maps",
        "Simonyan et al. 2014 (gradient); Sundararajan et al. 2017 (integrated gradients); Selvaraju et al. 2017 "
        "(Grad-CAM); Springenberg et al. 2015 (guided backprop)", "pytorch/captum: Saliency, IntegratedGradients, "
        "LayerGradCam, GuidedBackprop, GuidedGradCam",
        "Integrated gradients from a black image, 20 Gauss-Legendre steps; Grad-CAM at the last convolutional main layer "
        "for a class, at the main layer before a unit's for a unit, upsampled bilinearly; maps shown as absolute values "
        "summed over colour (Grad-CAM: its ReLU).",
        "Captum's code is called as it is. The network's functional ReLUs become ReLU modules in traced graphs so that "
        "guided backprop's rule reaches them.",
        ("tests/test_attribution.py::test_integrated_gradients_are_complete",
         "tests/test_attribution.py::test_guided_backprop_reaches_functional_relus_of_a_traced_network")),
    MethodEntry(
        "sanity", "The randomization test of attribution maps",
        "Adebayo et al. 2018, Sanity Checks for Saliency Maps", "adebayoj/sanity_checks_saliency (the cascade's order "
        "and re-initialization)",
        "Cascading re-initialization from the top weight group down; per step and image, Spearman of the absolute and of "
        "the signed maps, SSIM, Pearson of HOG; medians with 95% percentile-bootstrap intervals over images (1,000 "
        "resamples); guided backprop and guided Grad-CAM as negative controls.",
        "Degenerate maps (constant or non-finite) are counted, never scored: a step whose maps are mostly degenerate "
        "gives no figure. The verdict (not the paper's, which has none) reads the step that re-initializes the top third "
        "of the weight groups: the method passes when its interval lies below 0.5 and below guided backprop's; a "
        "verdict is shown only beside maps of the method, kind of target and Grad-CAM layer measured.",
        ("tests/test_attribution.py::test_degenerate_maps_are_counted_never_scored",
         "tests/test_attribution.py::test_the_criterion_reads_the_top_layers_against_the_control",
         "tests/test_attribution.py::test_the_randomization_test_decorrelates_the_gradient_maps_and_not_the_control")),
    MethodEntry(
        "caricature", "Caricatures",
        "Olah et al. 2018, The Building Blocks of Interpretability (Distill)", "tensorflow/lucid: "
        "lucid/recipes/caricature.py (dot_compare, caricature)",
        "Lucid's dot_compare with cossim_pow 0 (its default), the image at the network's input size, the standard "
        "transforms then crop_or_pad_to the input size, the probe's image sharing each step's transform draw.",
        "The number of steps is the on-demand renders' (Lucid: 512), recorded in each recipe. Lucid's recipe has no "
        "blur term and neither does this one.",
        ("tests/test_attribution.py::test_dot_compare_is_lucids_formula",)),
    MethodEntry(
        "dictionary", "Dictionary features (top-k sparse autoencoder)",
        "Gao et al. 2024, Scaling and Evaluating Sparse Autoencoders", "openai/sparse_autoencoder: train.py, loss.py",
        "ReLU(TopK(W_enc (x/s - b_dec) + b_enc)), unit-norm decoder atoms, b_dec started at the geometric median of "
        "32,768 positions, AuxK (k_aux = 2k, coefficient 1/32) normalized by the residual's variance; a feature's "
        "activation is read after top-k.",
        "Trained in full precision on this machine's device without the reference's sparse kernels; the geometric "
        "median is Weiszfeld's iteration written here (the reference's geom-median package ships only as a source "
        "archive), checked against scipy.",
        ("tests/test_factors.py::test_the_dictionarys_pieces_equal_their_references",)),
    MethodEntry(
        "labels", "Concept labels",
        "Bau et al. 2017 (Network Dissection) for the idea of naming units by concepts; the scoring is this project's",
        "WordNet 3.0 through ImageNet's synsets (app/core/zoo/imagenet_hierarchy.json); scipy: hypergeom, "
        "false_discovery_control",
        "A concept (a class or a WordNet ancestor) shared by a unit's top examples, scored coverage x log2(lift); clear "
        "when it covers at least 4 examples and 30% of them at 2x its base rate, and its permutation p-value (random sets "
        "of as many distinct dataset images) adjusted by Benjamini-Hochberg across every unit and concept of the layer "
        "is below 0.05.",
        "Network Dissection thresholds activation maps against segmented concepts (Broden); this labels by the classes of "
        "the top examples' images, with no segmentation. The permutation null is computed exactly (the hypergeometric "
        "distribution of the count) rather than sampled.",
        ("tests/test_labels.py::test_a_labels_p_value_is_its_permutation_null_and_chance_labels_do_not_survive",)),
    MethodEntry(
        "universality", "Nearest units in other models (universality)",
        "Li et al. 2016, Convergent Learning; Olah et al. 2020, Zoom In (Distill)", "yixuanli/convergent_learning "
        "(correlation matching)",
        "Pearson correlation of two units' activations after the ReLU over the same images, pooled over positions and "
        "over images and positions (each map averaged onto a 4x4 grid of the image); against a null of 10 permutations "
        "of the other model's image order, a match counts when it is above its layer's 99th percentile.",
        "Li et al. compare networks of one architecture position by position; two architectures' grids differ, so both "
        "maps are averaged onto a common grid first. Random-weight controls have their BatchNorm statistics re-estimated "
        "on the images (bench/match.py).",
        ("tests/test_factors.py::test_the_universality_null_is_chance_for_unrelated_units",
         "tests/test_factors.py::test_two_copies_match_unit_to_unit_and_a_permuted_copy_recovers_the_permutation")),
    MethodEntry(
        "modularity", "Modules (clusterability)",
        "Filan et al. 2021, Clusterability in Neural Networks", "dfilan/clusterability_in_neural_networks: "
        "src/spectral_cluster_model.py",
        "The whole network (and each adjacent pair) as one graph of absolute weights, a filter's kernel reduced to its L1 "
        "norm, isolated units removed, scikit-learn's SpectralClustering (arpack, k-means labels), the normalized cut "
        "against 100 networks with each layer's weights shuffled: the share that cut as low, and the z-score.",
        "The graph's layers are the main layers, a block's bottlenecks composed into the kernel between them. Beside the "
        "shuffles, a smooth control with the same weights and no modules (units on rings): the page says modular only "
        "when the network also cuts lower than that control.",
        ("tests/test_factors.py::test_filans_protocol_tells_modular_from_merely_smooth_and_from_random",)),
    MethodEntry(
        "nmf", "Neuron groups (NMF)",
        "Olah et al. 2018, The Building Blocks of Interpretability (Distill)", "scikit-learn: NMF; tensorflow/lucid: "
        "lucid/misc/channel_reducer.py",
        "scikit-learn's NMF (coordinate descent, init nndsvda) of post-ReLU activations, over the dataset or one probe.",
        "New activations are coded by non-negative least squares on the fixed components (FISTA), checked against "
        "scikit-learn's own solution.",
        ("tests/test_factors.py::test_the_code_is_the_nmf_solution_scikit_learn_finds",)),
    MethodEntry(
        "tuning", "Tuning curves and joint tuning",
        "Cammarata et al. 2020, Curve Detectors (Distill)", "the article's figures (no released code for the stimuli)",
        "Lines, edges, curves, gratings and colours drawn at the centre of the unit's receptive field on a grey canvas, the "
        "unit's response at that position against orientation (and curvature, frequency, hue); joint tuning: the ten most "
        "curve-selective units of a layer answering rotations of one unit's top examples, as the article's family plots; "
        "selectivity: the orientation selectivity index of the curve response, zero where a line answers as strongly.",
        "The stimuli are drawn here from the article's description (stroke width, aperture and canvas are in each "
        "recipe), not from the article's own images.",
        ("tests/test_tuning.py::test_hand_written_detectors_prefer_what_they_detect",
         "tests/test_tuning.py::test_the_curve_family_answers_rotations_of_one_units_examples_as_curve_detectors_defines_it",
         "tests/test_tuning.py::test_a_line_detector_is_no_curve_detector")),
)


def methods_page() -> MethodsPage:
    return MethodsPage(title="Methods", url=urls.methods(), json_url=urls.methods(json=True), methods=list(METHODS))
