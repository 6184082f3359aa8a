"""The `circuit-atlas` command line: one entry point, one module per subcommand."""
