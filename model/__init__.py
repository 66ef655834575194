"""ImageBERT: embeddings, encoder, pretraining tasks, trainer, retrieval eval, detectors."""
