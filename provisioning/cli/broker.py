"""``broker-config``: the folder for the centre's Mosquitto (TLS listener, who may do what,
certificates), optionally with a new broker certificate."""

from __future__ import annotations

import argparse
from pathlib import Path

from provisioning.cli.centre import load_centre_and_ca


def _cmd_broker_config(args: argparse.Namespace) -> int:
    from provisioning.bundle import replace_server_cert, write_broker_config

    centre, ca = load_centre_and_ca(args)
    if args.broker_host:
        centre, _ = replace_server_cert(centre, ca, args.broker_host)
        print(f"New broker certificate for {', '.join(args.broker_host)} (the old one is "
              "revoked): make the gates' bundles again if the first name changed.")
    centre, files = write_broker_config(
        centre, ca, args.out, install_dir=args.install_dir, bind_address=args.bind,
        run_as_user=args.user, persistence_dir=args.persistence_dir,
        share_groups=args.share_group or None, plugin_path=args.dynsec_plugin)
    from provisioning import pki

    known = pki.broker_identities(ca)
    print(f"Broker config for centre {centre.centre_id} in {files.directory}:")
    print(f"  {files.config_path.name} (TLS listener on port {centre.broker_port}, client "
          "certificates required, identity from the certificate), certs/")
    print(f"  {files.dynsec_path.name}: who may do what ({len(known.devices)} gate(s), "
          f"{', '.join(known.gateways) or 'no gateway yet'}, "
          f"{', '.join(known.technicians) or 'no technician yet'}; gateway share groups: "
          f"{', '.join(['gerbang-ingest', *centre.broker_share_groups])}); read by the "
          f"dynamic-security plugin {files.plugin_path}")
    if files.install_dir:
        print(f"  INSTALL.txt: how to put it in {files.install_dir} on the broker host")
    else:
        print(f"  run it here: mosquitto -c {files.config_path.resolve()}")
    print("Restart the broker after installing it: it reads the rules at start only.")
    return 0


def add_commands(sub: argparse._SubParsersAction, centre_option: argparse.ArgumentParser) -> None:
    """The ``broker-config`` command."""
    broker = sub.add_parser(
        "broker-config", parents=[centre_option],
        help="write the Mosquitto config, ACL and certificates",
        description="Writes a folder for the centre's Mosquitto: mosquitto.conf (one TLS "
                    "listener, client certificates required, the certificate name is the "
                    "username and client id, anonymous access off, messages over 16 MiB "
                    "refused), dynamic-security.json (read by Mosquitto's dynamic-security "
                    "plugin: each gate only its own topics, the gateway's ingest filters, the "
                    "technicians' commands; every subscription checked), and certs/ (ca.pem, "
                    "crl.pem, broker.pem, broker.key). With --install-dir the paths are those "
                    "on the broker host and INSTALL.txt says how to put it there. Later "
                    "`device add`, `revoke`, `gateway-cert` and `technician-cert` rewrite "
                    "dynamic-security.json and crl.pem in this folder; restart the broker then.",
        epilog="Example: gerbang-provision broker-config --out broker-c01 --install-dir "
               "/etc/mosquitto/gerbang")
    broker.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder to write")
    broker.add_argument("--install-dir", type=Path, metavar="DIR",
                        help="where the folder will live on the broker host (default: where "
                             "it is written, for a broker on this machine)")
    broker.add_argument("--bind", metavar="ADDRESS",
                        help="listen on this address only (default: every interface)")
    broker.add_argument("--user", metavar="ACCOUNT",
                        help="account Mosquitto switches to when started as root (default: "
                             "mosquitto)")
    broker.add_argument("--persistence-dir", type=Path, metavar="DIR",
                        help="where Mosquitto keeps queued messages (default /var/lib/mosquitto "
                             "with --install-dir, else <out>/data)")
    broker.add_argument("--broker-host", action="append", metavar="NAME",
                        help="make a new broker certificate for these names and addresses "
                             "(repeat for each; the old certificate is revoked)")
    broker.add_argument("--share-group", action="append", metavar="NAME",
                        help="a gateway share group ([gateway] share_group) the broker admits "
                             "besides gerbang-ingest (repeat for each; default: the groups "
                             "given before). The broker refuses any other subscription")
    broker.add_argument("--dynsec-plugin", type=Path, metavar="PATH",
                        help="Mosquitto's dynamic-security plugin on the broker host (default: "
                             "found here, e.g. /usr/lib/x86_64-linux-gnu/"
                             "mosquitto_dynamic_security.so)")
    broker.set_defaults(func=_cmd_broker_config)
