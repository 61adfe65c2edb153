"""A local MQTT broker for the demo and the tests: Mosquitto if installed, else embedded amqtt.

Mosquitto runs as a real child process with the project's own config
(``gerbang/conf/mosquitto-local.conf``) on a free loopback port. amqtt is a pure-Python fallback
for machines without Mosquitto; it speaks MQTT 3.1.1 only, so clients must use protocol 3 there.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Protocol

from gerbang.stopping import stop_processes

log = logging.getLogger(__name__)

CONFIG_TEMPLATE = Path(__file__).parent / "conf" / "mosquitto-local.conf"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on ``port``; TimeoutError otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout:.0f}s")


class LocalBroker(Protocol):
    """What the demo and tests need from a broker."""

    port: int
    protocol: int  # 5 or 3 (MQTT 3.1.1)
    name: str

    def stop(self) -> None:
        """Shut the broker down."""
        ...


class MosquittoBroker:
    """A Mosquitto child process on a loopback port, restartable on the same port and data."""

    name = "mosquitto"
    protocol = 5

    def __init__(self, data_dir: Path, port: int | None = None,
                 executable: str | None = None) -> None:
        self.executable = executable or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.config_path = self.data_dir / "mosquitto.conf"
        self.config_path.write_text(CONFIG_TEMPLATE.read_text().format(
            port=self.port, data_dir=self.data_dir, user=getpass.getuser()))
        self.log_path = self.data_dir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> MosquittoBroker:
        """Start and wait until it accepts connections."""
        with open(self.log_path, "ab") as logfile:
            self.process = subprocess.Popen([self.executable, "-c", str(self.config_path)],
                                            stdout=logfile, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start; see {self.log_path}") from None
        log.info("mosquitto listening on 127.0.0.1:%d", self.port)
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop (SIGTERM saves the persistence file; ``kill`` = SIGKILL, an abrupt crash)."""
        stop_processes([self.process], timeout=10, kill=kill)
        self.process = None

    def log_errors(self) -> list[str]:
        """The ``Error:`` lines Mosquitto has logged so far (e.g. it could not save its state)."""
        if not self.log_path.exists():
            return []
        return [line for line in self.log_path.read_text(errors="replace").splitlines()
                if ": Error: " in line]

    def restart(self, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s`` seconds, start again on the same port with the same data."""
        self.stop()
        time.sleep(down_s)
        self.start()


class EmbeddedBroker:
    """amqtt running on its own asyncio loop in a daemon thread (MQTT 3.1.1 only)."""

    name = "amqtt"
    protocol = 3

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="amqtt",
                                        daemon=True)
        self._broker = None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections."""
        from amqtt.broker import Broker

        config = {"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                  "auth": {"allow-anonymous": True}, "topic-check": {"enabled": False}}
        self._thread.start()

        async def boot() -> None:
            self._broker = Broker(config, loop=self._loop)
            await self._broker.start()

        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(timeout=15)
        wait_for_port(self.port)
        log.info("embedded amqtt broker (MQTT 3.1.1) on 127.0.0.1:%d", self.port)
        return self

    def stop(self) -> None:
        """Shut the broker and its loop down."""
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(10)
            self._broker = None
        self._loop.call_soon_threadsafe(self._loop.stop)


def start_local_broker(data_dir: Path, prefer: str = "auto") -> MosquittoBroker | EmbeddedBroker:
    """Mosquitto when installed (or ``prefer='mosquitto'``), otherwise the embedded broker."""
    if prefer in ("auto", "mosquitto") and (shutil.which("mosquitto")
                                            or Path("/usr/sbin/mosquitto").exists()):
        return MosquittoBroker(data_dir).start()
    if prefer == "mosquitto":
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto)")
    return EmbeddedBroker().start()
