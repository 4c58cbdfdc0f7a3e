"""Work done only on demand, for a person waiting on a page: probes of an uploaded image, caricatures, ablations."""
