"""The embedded examples: digits classification and seed 004's (2x-1)^2 regression."""
