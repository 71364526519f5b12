"""Findings, confidence flags, sign-off rules, comparison metrics (review logic, GUI-free)."""
