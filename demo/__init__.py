"""The embedded default: a generated website and the end-to-end run over every stage."""
