"""The one base class of radreview's domain errors.

A *domain error* is bad input or a refused action: a file that is not a usable study, a model
package refused for this scan, a sign-off refused while findings are undecided, a review
database that fails its checks. Every such exception in ``studies``, ``inference``,
``explain``, ``review`` and ``viewer`` derives from :class:`RadreviewError` (most keep a
standard base too, ``ValueError`` or ``RuntimeError``, so existing ``except ValueError``
handlers still catch them). The command line prints a domain error as one line
``radreview: error: <message>`` and exits with status 2; anything else is a bug (exit 3, with a
log file holding the traceback). Modelled on pydicom's ``InvalidDicomError`` family and
requests' ``RequestException``: catch one class to catch them all.
"""

from __future__ import annotations

__all__ = ["RadreviewError"]


class RadreviewError(Exception):
    """Base of every radreview domain error (bad input or a refused action).

    The message is meant for the user, on one line; the CLI prints it as
    ``radreview: error: <message>`` and exits with status 2.
    """
