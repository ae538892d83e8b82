"""Moved: the gold-judge evaluation is :mod:`rlhfkit.evaluation.evaluate`, the demo is
:mod:`rlhfkit.demo.pipeline`. These names stay importable from here until the last
importer (tests/integration/test_grpo.py) switches; then this module goes."""

from rlhfkit.data.jsonl import write_jsonl
from rlhfkit.evaluation.evaluate import PolicyScores, evaluate_policy

__all__ = ["PolicyScores", "evaluate_policy", "write_jsonl"]
