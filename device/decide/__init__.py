"""The check-in decision: the loop that turns a frame into admit/refuse, the participant card,
the roster in use, and the liveness policy. Imports capture, infer, gate, screen, uplink, config.
"""
