"""On-device inference: model bundle, TFLite runtime, detection, alignment, embedding, matching,
quality, liveness, and the accuracy metrics its calibration uses. Imports config and gerbang only.
"""
