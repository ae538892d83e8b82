"""The shared training loop and the stages built on it."""
