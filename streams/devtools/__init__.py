"""Development rigs, not needed by ``safeguard run``: the embedded test broker, the replica
simulator, the demo and the benchmark."""
