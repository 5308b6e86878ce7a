"""Kafka clients as this package configures them: librdkafka settings, the output producer, admin checks."""
