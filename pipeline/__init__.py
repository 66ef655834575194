"""Apache Beam pipelines: rule filters, relevance scoring, region features."""
