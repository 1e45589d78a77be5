"""The last stages, which read records only: rank the measured models (ranking.py writes
ranking.json), draw the report from it (report.py) and package a chosen model as a bundle that
verifies (bundle.py). Nothing here imports torch, onnx or stage code."""
