"""Stages: thin wiring of data, models and a loss into the shared loop."""
