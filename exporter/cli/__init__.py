"""The command line: `pgparent` and its subcommands, the terminal's tables, `terminate` and the demo."""
