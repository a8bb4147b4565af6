"""CLI verbs: one module per verb, each with `HELP`, `add_arguments(parser)` and `run(args) -> int`."""
