"""Framework-free filters: text, language, image, dedup, aggregation and learned relevance."""
