"""LAIT spiders."""
