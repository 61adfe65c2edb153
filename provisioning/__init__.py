"""Technician tools (gerbang-provision): centre PKI, broker folder, gate bundles, rosters, models.
May import device, gerbang and gateway's public modules; device and gateway never import it."""
