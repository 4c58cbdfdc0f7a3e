"""Feature visualization by optimization (Olah et al., "Feature Visualization", Distill 2017).

Small composable parts, after Lucid and lucent: parameterizations return
``(params, image_fn)`` (`param`), transforms are resampled once per step
(`transform`), objectives compose with ``+``, ``-`` and ``*`` (`objectives`),
and `render.render` is pure: tensors in, tensors out.
"""
