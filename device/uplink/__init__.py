"""Where every decision goes after the door: the outbox (SQLite journal), the MQTT uplink that
drains it, alarms, and commands in / acknowledgements out. Imports config and gerbang only.
"""
