"""Retraining: training data, fine-tuning the pretrained base, the evaluation gate, the model registry, jobs."""
