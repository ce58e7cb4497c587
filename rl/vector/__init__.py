"""The RL steering vector: one dense vector per layer, trained by the one GRPO trainer."""
