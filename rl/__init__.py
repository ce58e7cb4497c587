"""RL-trained methods: the shared budget and task prompts, RLVR (LoRA + TRL GRPO), CRL."""
