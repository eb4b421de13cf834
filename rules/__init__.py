"""Rules both the aggregator and the independent verifier trust: pure, integer-only, no I/O."""
