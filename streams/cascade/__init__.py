"""The cascade: a CPU prefilter, distilled from the reasoner, that decides the easy majority
so the GPUs only see what needs reasoning (docs/cascade.md)."""
