"""The policy author's tools: datasets, ``policies lint`` and ``eval``."""
