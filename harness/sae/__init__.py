"""Sparse autoencoders: provision (`provision`), train (`train`), measure (`quality`), describe (`cards`).

The entry point for other parts of crl-bench is `load_sae(spec, model_info, layer)`, which
returns a `LoadedSAE` bound to the layer it reads, validated against the model.
"""

from harness.sae.provision import LoadedSAE, check_sae_matches, load_sae

__all__ = ["LoadedSAE", "check_sae_matches", "load_sae"]
