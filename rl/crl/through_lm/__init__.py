"""CRL trained through the LM: a feature controller trained by the one GRPO trainer."""
