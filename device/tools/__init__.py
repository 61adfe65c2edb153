"""Technician and engineer tools run from ``gerbang-device``: accuracy and PAD evaluation, speed
benchmark, self-test. They may import any device package; nothing in the service imports them.
"""
