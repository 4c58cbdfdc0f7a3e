"""Microscope's web server and the torch-free code it shares with the precompute job."""
