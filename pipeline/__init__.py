"""Apache Beam pipelines: rule filters, relevance scoring, region features."""
from pipeline.runners import quiet_beam_import_noise

# Before any pipeline module imports Beam: its BigQuery import notice is noise in every LAIT run.
quiet_beam_import_noise()
