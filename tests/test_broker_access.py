"""Issue 14, High-1 and the broker's limits, against a real Mosquitto running the config that
`gerbang-provision broker-config` generates, and a real gateway ingest over mutual TLS.

A gate certificate that subscribes to the gateway's shared subscription once would, with
Mosquitto 2.0's ``acl_file``, be handed every other event of the centre (which the broker then
drops for it, while the publishing gates get their PUBACK): half the check-ins lost, no alert.
The generated config uses the dynamic-security plugin instead, which refuses that SUBSCRIBE
(0x87), so the gateway stores every event. The same broker refuses a gate's wider
subscriptions, a certificate whose CN is not in its rules, every use of the plugin's
``$CONTROL`` API, and any message larger than the largest command (16 MiB).

The centre is made with the technician's commands (base-compatible ones in the fixture, so the
first test shows the old behaviour on the old code too).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_pki_broker import MOSQUITTO, NOT_AUTHORIZED, TIMEOUT, Probe, event_payload
from tlscentre import run_cli, start_tls_centre
from waiting import wait_until

from gateway.ingest import Ingest
from gateway.store import open_store
from gerbang import wire
from gerbang.broker import MosquittoBroker
from gerbang.config import BrokerConfig

CENTRE = "c01"
GATE_A, GATE_B, THIEF = "c01-r01-a", "c01-r02-a", "c01-r03-a"
GROUP = "gerbang-ingest"  # the default share group of the gateway's ingest workers
COMMAND_LIMIT = 16 * 1024 * 1024  # device.uplink.commands.MAX_COMMAND_BYTES


class Centre(SimpleNamespace):
    """The centre folder, its broker and how a test client reaches it."""

    def tls(self, device: str) -> tuple[Path, Path]:
        tls = self.dir / "devices" / device / "tls"
        return tls / f"{device}.pem", tls / f"{device}.key"

    def gateway_tls(self, name: str = "gateway") -> tuple[Path, Path]:
        return self.dir / "gateway" / f"{name}.pem", self.dir / "gateway" / f"{name}.key"

    def probe(self, cert: tuple[Path, Path], **kwargs) -> Probe:
        env = SimpleNamespace(ca=SimpleNamespace(cert_path=self.dir / "ca" / "ca.pem"),
                              broker=self.broker)
        probe = Probe(env, cert, **kwargs)
        self.made.append(probe)
        assert probe.connect(), f"could not connect with {cert}: {probe.connack}"
        return probe

    def gateway_broker(self, name: str = "gateway") -> BrokerConfig:
        cert, key = self.gateway_tls(name)
        return BrokerConfig(host="127.0.0.1", port=self.broker.port,
                            ca_file=self.dir / "gateway" / "ca.pem", cert_file=cert,
                            key_file=key)


@pytest.fixture(scope="module")
def centre(tmp_path_factory):
    root = tmp_path_factory.mktemp("access")
    cdir, broker = start_tls_centre(root, CENTRE, (GATE_A, GATE_B, THIEF))
    yield Centre(root=root, dir=cdir, broker=broker, made=[])
    broker.stop()


@pytest.fixture
def probes(centre):
    yield centre
    for probe in centre.made:
        probe.close()
    centre.made.clear()


def publish_events(gates: list[Probe], devices: list[str], count: int) -> int:
    """``count`` QoS 1 events round-robin from ``gates``; each PUBACK must be a success (the
    gate would then delete the event from its outbox). Returns how many were acknowledged."""
    acked = 0
    for seq in range(count):
        probe, device = gates[seq % len(gates)], devices[seq % len(devices)]
        reason = probe.publish(wire.events_topic(CENTRE, device), event_payload(device, seq))
        assert not reason.is_failure, reason
        acked += 1
    return acked


def test_a_gate_cannot_join_the_gateways_share_group(probes, tmp_path, caplog):
    """High-1: the thief's SUBSCRIBE to the gateway's shared subscription is refused, and the
    gateway stores every event the gates were told was delivered (ingest count = published)."""
    store = open_store(tmp_path / "gw.sqlite")
    ingest = Ingest(store, probes.gateway_broker(), client_id="gateway", centre=CENTRE,
                    share_group=GROUP)
    ingest.start()
    try:
        assert ingest.connected.wait(15), probes.broker.log()[-2000:]
        thief = probes.probe(probes.tls(THIEF))
        (suback,) = thief.subscribe(f"$share/{GROUP}/{wire.subscription(CENTRE, 'events')}")
        gates = [probes.probe(probes.tls(GATE_A)), probes.probe(probes.tls(GATE_B))]
        published = publish_events(gates, [GATE_A, GATE_B], 200)
        # Every event is stored within seconds; give a lossy broker the same time to show it.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(store.events()) < published:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        ingest.stop()
    stored = len(store.events())
    assert stored == published, (f"the gateway stored {stored} of {published} acknowledged "
                                 f"events; the thief's SUBACK was {suback}")
    assert suback.value == NOT_AUTHORIZED, suback
    assert thief.messages == []
    assert "refused" not in caplog.text  # the gateway's own subscriptions were all granted


def test_a_gate_may_subscribe_to_its_own_commands_only(probes):
    gate = probes.probe(probes.tls(GATE_A))
    assert not gate.subscribe(f"gerbang/v1/{CENTRE}/{GATE_A}/cmd/+")[0].is_failure
    for refused in ("#", "$SYS/#", f"gerbang/v1/{CENTRE}/{GATE_B}/cmd/+",
                    f"gerbang/v1/{CENTRE}/{GATE_B}/cmd/unlock", wire.subscription(CENTRE, "events"),
                    f"$share/{GROUP}/gerbang/v1/{CENTRE}/{GATE_A}/cmd/+",
                    "$CONTROL/dynamic-security/v1/response"):
        (reason,) = gate.subscribe(refused)
        assert reason.value == NOT_AUTHORIZED, (refused, reason)


def test_every_subscription_of_the_gateway_is_granted(probes):
    """Plain and shared, every leaf the ingest takes (cmd_ack included), for the centre and
    for a gateway configured with centre "+"; nothing wider."""
    from provisioning.broker_config import GATEWAY_SUBSCRIBE_LEAVES, gateway_filters

    gateway = probes.probe(probes.gateway_tls())
    filters = gateway_filters(CENTRE)
    assert len(filters) == 2 * 2 * len(GATEWAY_SUBSCRIBE_LEAVES)
    for topic in filters:
        (reason,) = gateway.subscribe(topic)
        assert not reason.is_failure, (topic, reason)
    for refused in (f"gerbang/v1/{CENTRE}/#", "#", "$SYS/#", f"$share/other/{filters[0]}",
                    f"gerbang/v1/{CENTRE}/+/cmd/+"):
        (reason,) = gateway.subscribe(refused)
        assert reason.value == NOT_AUTHORIZED, (refused, reason)


def test_the_ingest_group_names_match():
    from gateway.ingest import DEFAULT_SHARE_GROUP
    from provisioning.broker_config import DEFAULT_SHARE_GROUP as BROKER_DEFAULT

    assert DEFAULT_SHARE_GROUP == BROKER_DEFAULT == GROUP


def test_a_certificate_not_in_the_rules_can_do_nothing_until_the_broker_restarts(probes):
    """A gate added after the broker started has a valid certificate, but the broker's rules
    (read at start) do not name it: it connects, and may publish, subscribe, receive nothing.
    `device add` rewrote the rules; after the restart it has its own topics."""
    out = run_cli("device", "add", "c01-r09-z", "--room", "R09", "--centre-dir", probes.dir)
    assert "restart the broker" in out and "dynamic-security.json" in out
    rules = json.loads((probes.root / "broker" / "dynamic-security.json").read_text())
    assert "c01-r09-z" in {c["username"] for c in rules["clients"]}
    gateway = probes.probe(probes.gateway_tls())
    gateway.subscribe_as_ingest()
    stranger = probes.probe(probes.tls("c01-r09-z"))
    own = wire.events_topic(CENTRE, "c01-r09-z")
    for topic in ("#", f"gerbang/v1/{CENTRE}/c01-r09-z/cmd/+", wire.subscription(CENTRE)):
        assert stranger.subscribe(topic)[0].value == NOT_AUTHORIZED, topic
    assert stranger.publish(own, event_payload("c01-r09-z", 1)).value == NOT_AUTHORIZED
    assert stranger.publish(wire.device_topic(CENTRE, GATE_A, "cmd/unlock"),
                            b"{}").value == NOT_AUTHORIZED
    marker = wire.events_topic(CENTRE, GATE_A)
    probes.probe(probes.tls(GATE_A)).publish(marker, event_payload(GATE_A, 1))
    wait_until(lambda: gateway.received(marker), TIMEOUT, "the marker")
    assert gateway.received(own) == []
    for probe in probes.made:
        probe.close()
    probes.made.clear()
    probes.broker.restart()
    gateway = probes.probe(probes.gateway_tls())
    gateway.subscribe_as_ingest()
    known = probes.probe(probes.tls("c01-r09-z"))
    assert not known.subscribe(f"gerbang/v1/{CENTRE}/c01-r09-z/cmd/+")[0].is_failure
    assert not known.publish(own, event_payload("c01-r09-z", 2)).is_failure
    wait_until(lambda: gateway.received(own), TIMEOUT, "the new gate's event")


def test_nobody_can_use_the_dynamic_security_control_api(probes):
    """Every identity's publish to ``$CONTROL/dynamic-security/v1`` is refused (0x87), so the
    rules change only through the generated file; asking to give the thief ``#`` changed
    nothing, and the plugin did not rewrite its file."""
    rules_file = probes.root / "broker" / "dynamic-security.json"
    before = hashlib.sha256(rules_file.read_bytes()).hexdigest()
    grab = json.dumps({"commands": [
        {"command": "createRole", "rolename": "all"},
        {"command": "addRoleACL", "rolename": "all", "acltype": "subscribePattern",
         "topic": "#", "allow": True},
        {"command": "addClientRole", "username": THIEF, "rolename": "all"},
        {"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": True}]},
    ]}).encode()
    for cert in (probes.gateway_tls(), probes.tls(THIEF), probes.tls(GATE_A)):
        probe = probes.probe(cert)
        assert probe.publish("$CONTROL/dynamic-security/v1", grab).value == NOT_AUTHORIZED
        for topic in ("$CONTROL/#", "$CONTROL/dynamic-security/v1/response"):
            assert probe.subscribe(topic)[0].value == NOT_AUTHORIZED, (cert, topic)
    thief = probes.probe(probes.tls(THIEF))
    assert thief.subscribe("#")[0].value == NOT_AUTHORIZED
    assert hashlib.sha256(rules_file.read_bytes()).hexdigest() == before


def _largest_and_too_large(port: int, connect) -> tuple[list[int], bool]:
    """The gateway side sends a 16 MiB command, then one 128 KiB larger, to a subscribed gate:
    what the gate received (sizes) and whether the broker dropped the sender."""
    gate, gateway = connect("gate"), connect("gateway")
    topic = wire.device_topic(CENTRE, GATE_A, "cmd/models")
    sizes: list[int] = []
    gate.client.on_message = lambda _c, _u, msg: sizes.append(len(msg.payload))
    assert not gate.subscribe(f"gerbang/v1/{CENTRE}/{GATE_A}/cmd/+")[0].is_failure
    assert not gateway.publish(topic, b"x" * COMMAND_LIMIT).is_failure
    wait_until(lambda: sizes, 30, "the 16 MiB command at the gate")
    gateway.client.reconnect_delay_set(60, 60)  # no retry of the refused packet meanwhile
    gateway.client.publish(topic, b"x" * (COMMAND_LIMIT + 128 * 1024), qos=1)
    wait_until(gateway.disconnected.is_set, 30, "the broker to drop the oversize sender")
    time.sleep(0.5)
    return sizes, gateway.disconnected.is_set()


def test_the_broker_refuses_messages_larger_than_the_largest_command(probes):
    """`max_packet_size` in the generated config: a 16 MiB command passes, a larger one gets
    its sender disconnected ("oversize packet") and reaches nobody."""
    def connect(who: str) -> Probe:
        return probes.probe(probes.tls(GATE_A) if who == "gate" else probes.gateway_tls())

    sizes, dropped = _largest_and_too_large(probes.broker.port, connect)
    assert sizes == [COMMAND_LIMIT] and dropped
    wait_until(lambda: "disconnected due to oversize packet" in probes.broker.log(), TIMEOUT,
               "the broker to log the oversize packet")


def test_the_local_broker_config_has_the_same_limit(tmp_path):
    """`gerbang/conf/mosquitto-local.conf` (demo, tests, bench) bounds messages the same way."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed")
    broker = MosquittoBroker(tmp_path / "broker").start()
    env = SimpleNamespace(broker=broker)
    made: list[Probe] = []

    def connect(_who: str) -> Probe:
        probe = Probe(env, None, plain=True)
        made.append(probe)
        assert probe.connect()
        return probe

    try:
        sizes, dropped = _largest_and_too_large(broker.port, connect)
    finally:
        for probe in made:
            probe.close()
        broker.stop()
    assert sizes == [COMMAND_LIMIT] and dropped
    assert "oversize packet" in broker.log_path.read_text()


def test_a_share_group_the_broker_does_not_know_is_an_error_at_the_gateway(probes, tmp_path,
                                                                           caplog):
    """A gateway configured with a share group that `broker-config --share-group` never named
    gets every subscription refused, so it would receive nothing: it says so, at ERROR."""
    ingest = Ingest(open_store(tmp_path / "gw.sqlite"), probes.gateway_broker(),
                    client_id="gateway", centre=CENTRE, share_group="not-in-the-rules")
    ingest.start()
    try:
        assert ingest.connected.wait(15)
        wait_until(lambda: "the broker refused" in caplog.text, TIMEOUT, "the ERROR")
    finally:
        ingest.stop()
    (record,) = [r for r in caplog.records if "the broker refused" in r.getMessage()]
    assert record.levelname == "ERROR" and "--share-group" in record.getMessage()
    # Every shared one; the plain status subscription (every worker sees every birth) stays.
    from gateway.ingest import _LEAVES, _PLAIN_LEAVES

    shared = len(_LEAVES) - len(_PLAIN_LEAVES)
    assert f"refused {shared} of {len(_LEAVES)} subscriptions of gateway" in record.getMessage()
