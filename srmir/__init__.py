"""srmir: GRPO safety alignment with shadow reward models (one reward model per harm category)."""
__version__ = "0.1.0"
