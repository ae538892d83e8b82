"""Models: loading/saving Hugging Face checkpoints and building tiny ones."""
