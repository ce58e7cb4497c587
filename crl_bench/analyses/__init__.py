"""Analyses of trained methods against base and RLVR: behavioural similarity, SAE-feature and
circuit overlap, CRL interactions, per-group breakdowns, the setting-3 ceiling and exploration."""
