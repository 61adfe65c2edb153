"""Centre gateway: MQTT ingest of gate events, attendance store, live dashboard and JSON API."""
