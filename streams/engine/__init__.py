"""The event path: the poll loop, the per-event stages, outputs and the commit protocol.

Read :mod:`streams.engine.pipeline` first (the loop and the stage map), then
:mod:`streams.engine.delivery` (when offsets are committed)."""
