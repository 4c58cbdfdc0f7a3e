"""Networks written as plain PyTorch modules from their published layout, to be traced like any other.

Each module's parameter names are its source's (Caffe layer paths, TF-slim
scopes, a state dict's keys), so a loader maps files to parameters by name
and the layer names people cite come from the same names.
"""
