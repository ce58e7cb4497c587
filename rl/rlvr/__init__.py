"""RLVR: the end-to-end reference, a LoRA adapter trained with TRL's GRPO (`trainer`, `config`)."""
