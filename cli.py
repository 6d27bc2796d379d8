"""`python cli.py COMMAND`: the tfsemiseg command line, the same click group as the installed
`tfsemiseg` command (tfsemiseg/cli.py)."""

from tfsemiseg.cli import cli, main

__all__ = ["cli", "main"]

if __name__ == "__main__":
    main()
