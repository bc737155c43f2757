"""Reading finished searches: the report (leaderboards, curves, diagnosis, importance, comparisons)."""

from fer_tune.analysis.diagnosis import Diagnosis, diagnose
from fer_tune.analysis.importance import param_importance
from fer_tune.analysis.report import write_report

__all__ = [
    "diagnose",
    "Diagnosis",
    "param_importance",
    "write_report",
]
