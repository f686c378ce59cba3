"""The ``iiae`` command line (:func:`iiae.cli.main.main`)."""
