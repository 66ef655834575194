"""One module per `lait` subcommand; each exposes ``register(subparsers)``."""
