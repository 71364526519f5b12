"""Shadow deployment (GUI-free): the AI runs silently on every arriving study and is measured
against what the radiologists decided.

:mod:`~radreview.review.shadow.intake` (folder, Orthanc changes feed, DICOM node),
:mod:`~radreview.review.shadow.rules` (eligibility), :mod:`~radreview.review.shadow.ledger`
(the job ledger, SQLite or PostgreSQL, audit-chained), :mod:`~radreview.review.shadow.runner`
(the Dask driver), :mod:`~radreview.review.shadow.outcomes` (what the AI is measured against) and
:mod:`~radreview.review.shadow.report` (metrics, subgroups, drift, failures).
"""

from .ledger import LedgerError, ShadowLedger, is_ledger, job_key

__all__ = ["LedgerError", "ShadowLedger", "is_ledger", "job_key"]
