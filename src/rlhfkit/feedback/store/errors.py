"""What the store refuses, in words a user (or the web app's error page) can act on."""

from __future__ import annotations

from rlhfkit.errors import EX_DATAERR, RlhfkitError


class StoreError(RlhfkitError):
    """Base of the labeling store's errors; ``status`` is the HTTP status the app sends."""

    status = 400


class NotFound(StoreError):
    """No such object, or not one this annotator may see (the two look the same)."""

    status = 404


class Conflict(StoreError):
    """The request clashes with the current state (e.g. the task was already judged)."""

    status = 409


class Invalid(StoreError):
    """A bad value: the message names the field and what was expected."""

    status = 422
    exit_code = EX_DATAERR


class LoginFailed(StoreError):
    status = 401
