"""How the stages run: their context (`context.Stage`), the registry of stages, runs and shards, devices, the Ray
cluster, the recipes' defaults, the images they read, and the worker that fills the store."""
