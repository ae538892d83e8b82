"""The labeling web app (FastAPI, server-rendered pages). See :func:`create_app`."""

from rlhfkit.feedback.service.app import create_app

__all__ = ["create_app"]
