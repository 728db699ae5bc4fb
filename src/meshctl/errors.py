"""Errors the user sees as one line on stderr and exit code 1."""

from __future__ import annotations


class MeshctlError(Exception):
    """A failure the user can act on: printed as ``Error: <message>``, exit 1, no traceback."""

    exit_code = 1


class InputError(MeshctlError):
    """Bad input: the message names the source, document number and line where known."""


class ClusterError(MeshctlError):
    """The cluster could not be reached or did not answer as expected."""


class UsageError(MeshctlError):
    """Bad arguments (an unknown resource type, a malformed flag value): exit 2, as click's usage errors."""

    exit_code = 2
