"""Technician tools: model bundle, enrollment and rosters (PKI and device bundles next)."""
