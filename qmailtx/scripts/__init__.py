"""One module per command-line tool; each exposes C{main(argv) -> int}."""
