"""From (policy, content) to a verdict: prompts, the dedupe cache, replica I/O, answer parsing."""
