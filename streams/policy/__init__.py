"""Policies: the files the model reads, routing events to them, and live updates."""
