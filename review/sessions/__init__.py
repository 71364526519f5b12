"""Shadow-mode and reader-study reading sessions (GUI-free): protocol, store, report.

See :mod:`radreview.review.sessions.core` for the protocols and the read state machine,
:mod:`~radreview.review.sessions.db` for the SQLite/PostgreSQL store with its hash-chained
audit log, and :mod:`~radreview.review.sessions.report` for the metrics and figures.
"""

from .core import (DEFAULT_QUESTION, MODES, POSITIVE_SCORE, Read, ReadingSession, SessionError, ai_result_from_run,
                   read_cases_csv, read_truth_csv, run_ai, ai_from_ledger)
from .db import SessionDB, SessionDBError, is_session_db

__all__ = ["DEFAULT_QUESTION", "MODES", "POSITIVE_SCORE", "Read", "ReadingSession", "SessionError", "SessionDB",
           "SessionDBError", "ai_from_ledger", "ai_result_from_run", "is_session_db", "read_cases_csv", "read_truth_csv", "run_ai"]
