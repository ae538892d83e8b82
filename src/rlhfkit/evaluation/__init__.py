"""Evaluation: scoring with reward models, win rates, statistics, reports."""
