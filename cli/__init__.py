"""The `ft` command line: thin Click commands that parse, call library functions and print."""
