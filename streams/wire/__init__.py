"""Wire formats: the event models (labels, dead letters, content) and their JSON/Avro codecs.

The Avro schemas ship inside this package (``streams/wire/schemas``, the top-level ``schemas/``)."""
