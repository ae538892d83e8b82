"""Rollouts: sampling completions from a policy (and, later, scoring them)."""
