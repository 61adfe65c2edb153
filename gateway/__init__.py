"""Centre gateway: MQTT ingest of gate events, the attendance store, live dashboard and JSON API.

May import gerbang (shared wire contract, config, MQTT helpers); never device (the gate's code).
"""
