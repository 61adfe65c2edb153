"""Gate device service: camera → face verification → door signal → outbox → MQTT uplink.

Packages, in the order a frame flows (each imports only those before it, plus ``gerbang``;
never ``gateway`` or ``provisioning``): ``config`` (validated settings) and ``bus`` (ZeroMQ
between processes) → ``capture`` → ``infer`` → ``gate``, ``screen``, ``uplink`` (where a
decision goes) → ``decide`` (the check-in) → ``manage`` (rosters, signed files, model
updates) → ``processes`` (the workers and their supervisor) → ``tools`` → ``cli``.
"""
