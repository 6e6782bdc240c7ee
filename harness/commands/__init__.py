"""One module per `bdpo` subcommand (see harness/cli.py for the interface)."""
