"""The offline precompute job: networks, weights and the stages that fill the store."""
