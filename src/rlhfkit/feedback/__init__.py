"""Human and AI feedback: turning many pairwise comparisons into scalar rankings."""
