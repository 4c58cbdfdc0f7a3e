"""The offline stages, one module each: what each computes into the store, and its entry in the stage registry
(`precompute.running.registry`)."""
