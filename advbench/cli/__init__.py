"""The ``advbench`` command line: one thin module per subcommand."""
