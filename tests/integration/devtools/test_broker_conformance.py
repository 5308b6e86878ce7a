"""What the test broker does with transactions, measured (the exactly-once tests depend on it)."""

from __future__ import annotations

import os


def test_transaction_visibility_is_measured(broker_hides_aborted: bool) -> None:
    # Committed data is always visible (asserted inside the fixture). Apache Kafka also hides
    # aborted records; the embedded Tansu 0.6.0 broker does not, which this records so a change in
    # the broker (or running against a real Kafka via KAFKA_BOOTSTRAP_SERVERS) is noticed.
    print(f"\nbroker hides aborted transactional records from read_committed readers: {broker_hides_aborted}")
    if os.environ.get("SAFEGUARD_EXPECT_KAFKA_EOS") == "1":
        assert broker_hides_aborted
