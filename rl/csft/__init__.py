"""C-SFT (control-model supervised fine-tuning): a feature controller distilled from an
RL-trained model, the LLM frozen (`rl.csft.trainer`)."""
