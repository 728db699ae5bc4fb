"""A faithful fake of the Kubernetes API server for tests (see server.py)."""

from fakekube.server import ApiError, FakeKube, User

__all__ = ["ApiError", "FakeKube", "User"]
