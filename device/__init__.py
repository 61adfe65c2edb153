"""Gate device service: camera → face verification → door signal → outbox → MQTT uplink."""
