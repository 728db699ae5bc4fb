"""Errors the user sees as one line on stderr: ``Error: <message>``, no traceback.

Two exit codes, as kubectl and cobra (linkerd) give them:

- 2, :class:`UsageError`: the command line itself is wrong, whatever the world
  looks like: an unknown flag, a missing argument, a flag value outside its
  domain (``--rps 0``, ``--wait abc``, ``-L Bad_NS``), flags that exclude each
  other.  Click's own usage errors exit 2 too, so the two agree.
- 1, every other :class:`MeshctlError`: the line was fine but running it
  failed: a file that cannot be read or parsed, a cluster that does not
  answer, a check that fails.

A message starts with the problem and names where it is (flag, file,
document number, field): ``--rps: expected a rate in (0, 500], got 0``.
"""

from __future__ import annotations


class MeshctlError(Exception):
    """A failure the user can act on: printed as ``Error: <message>``, exit 1, no traceback."""

    exit_code = 1


class UsageError(MeshctlError):
    """The command line is wrong (flag value, argument count, exclusive flags): exit 2."""

    exit_code = 2


class InputError(MeshctlError):
    """Bad input: the message names the source, document number and line where known."""


class ClusterError(MeshctlError):
    """The cluster could not be reached or did not answer as expected."""
