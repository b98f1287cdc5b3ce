"""The `shipyard` command line: `main.py` registers the commands; one module per group."""
