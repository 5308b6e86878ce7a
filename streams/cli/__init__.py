"""The ``safeguard`` command line (:func:`streams.cli.main.main`)."""
