"""Methods the stages and the live work share: attribution maps, ranking, evaluation, the expanded kernels."""
