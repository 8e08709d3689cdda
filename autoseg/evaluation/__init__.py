"""Evaluation of nnU-Net validation predictions: metrics, collection, ranking, statistics and reports."""
