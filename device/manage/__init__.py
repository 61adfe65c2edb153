"""What the gateway and the technician manage on a gate: signed rosters, configs and model
bundles, chunked uploads, the encrypted template store, key files. Imports decide, infer, uplink.
"""
