"""CRL: a controller that adds SAE features to the frozen model's residual stream token by token,
trained with RL from the task's verifiable reward (`trainer`, `config`), evaluated as `crl_steered` (`lm`)."""
