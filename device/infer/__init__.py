"""On-device inference: model bundle, TFLite runtime, detection, alignment, embedding, matching."""
