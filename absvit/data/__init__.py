"""Datasets: the embedded generator, ImageNet-C shards, and readers for the published layouts."""

# The robustness suites, each read from its own root folder.
SUITES = ("clean", "imagenet-c", "imagenet-a", "imagenet-r", "imagenet-sketch")
