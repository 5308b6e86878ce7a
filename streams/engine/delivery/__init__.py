"""The commit protocol: when an event's outputs count as delivered and its offset may be committed.

Everything about per-partition order, settlement, watermarks and commits is in this package (the
index and its watermarks in :mod:`~streams.engine.delivery.ledger`, the two strategies in
:mod:`~streams.engine.delivery.strategies`); the pipeline only
calls :class:`Delivery` (``start`` once with the consumer, before subscribing; ``complete`` a
finished event, ``tick`` between polls, ``revoke``/``lose`` from the rebalance callbacks,
``drain``/``close`` at shutdown). Both strategies run on the pipeline's event-loop thread (``start``
off it: it may block) and share one :class:`Ledger`.

**At-least-once** (:class:`AtLeastOnce`, the default):
  1. Every output record of an event (labels, reasoning records, dead letters) is produced as soon
     as the event is decided, in whatever order events finish.
  2. The event is settled when the broker has acknowledged all of its records (delivery reports).
     A record the producer gives up on is fatal (:attr:`Delivery.failure`): its event never
     settles, so nothing at or after it is committed.
  3. Settled events advance their partition's contiguous low watermark (:class:`Ledger`): one slow
     event holds the watermark, never lets it skip.
  4. Watermarks are committed every ``batching.commit_interval_s`` (without waiting), on revoke
     (for the revoked partitions, after a bounded flush, synchronously inside the rebalance
     callback) and on shutdown (synchronously).
  A crash re-delivers everything after the last commit: duplicates (same ``label_id``), never a gap.

**Exactly-once** (:class:`ExactlyOnce`, ``delivery: exactly_once``):
  1. Decided events wait in their partition's order; only the oldest event of each partition is
     released, so records leave in offset order per partition.
  2. Released records are produced inside the open transaction, and the event settles (the
     transaction will carry its offset). The stable ``transactional.id`` fences a zombie of the
     same instance; the consumer group metadata fences stale generations.
  3. Every ``batching.commit_interval_s``, on revoke and on shutdown the settled positions are added
     with ``send_offsets_to_transaction`` and the transaction is committed: labels and offsets become
     visible together, to ``read_committed`` readers exactly once.
  4. A commit that fails abortably is aborted, every assigned partition is rewound to its committed
     offset, and all work in flight is dropped and consumed again. One that fails retriably is
     committed again at the next tick (nothing is produced meanwhile); at a revoke it is aborted.
  Inference happens outside transactions, so they stay short relative to ``transaction.timeout.ms``
  however long the model reasons.

Both: revoke commits what is settled for the revoked partitions, then drops their unfinished work
(its tasks are cancelled; the next owner consumes it again); a lost partition is dropped without a
commit (another member may own it already; exactly-once also aborts the open transaction, which
may hold its records). A failed commit at a revoke is logged: the next owner re-labels from the
last commit (duplicates with at-least-once, nothing visible twice with exactly-once).
"""

from __future__ import annotations

from streams.engine.delivery.ledger import Ledger
from streams.engine.delivery.strategies import AtLeastOnce, Delivery, ExactlyOnce

__all__ = ["AtLeastOnce", "Delivery", "ExactlyOnce", "Ledger"]
