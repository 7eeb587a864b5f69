"""The ``deeppicker`` command: one module per subcommand, each with ``add_arguments`` and ``main``."""
