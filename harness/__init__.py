"""crl-bench: compare CRL, RLVR and steering-vector baselines on a frozen LLM.

Importing this package is cheap and has no side effects; heavy modules (torch,
transformers, lm-eval) are imported by the submodules that need them.
"""

__version__ = "0.1.0"
