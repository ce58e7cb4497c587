"""RL-trained methods (import only the core, `harness`): the shared budget, settings and run
directories (`budget`, `config`, `runs`), RLVR (`rl.rlvr`) and CRL (`rl.crl`)."""
