"""Where the client finds its coordinators and TLS files, exactly as the CLI
does: explicit arguments, then the environment (``FERRY_COORDINATOR``,
``FERRY_CA``, ``FERRY_CERT``, ``FERRY_KEY``), then the config file
(``FERRY_CONFIG``, else ``$XDG_CONFIG_HOME/ferry/config.toml``, else
``~/.config/ferry/config.toml``, the file ``ferry dev`` writes)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

__all__ = ["ClientConfig", "default_config_path", "parse_address", "parse_coordinator_list"]

PathLike = Union[str, "os.PathLike[str]"]


def default_config_path() -> Path:
    """``$XDG_CONFIG_HOME/ferry/config.toml``, else ``$HOME/.config/ferry/config.toml``."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "ferry" / "config.toml"
    home = os.environ.get("HOME")
    if not home:
        raise ConfigError("neither XDG_CONFIG_HOME nor HOME is set, so there is no default config location")
    return Path(home) / ".config" / "ferry" / "config.toml"


def parse_address(address: str) -> Tuple[str, str]:
    """Splits ``HOST:PORT`` or ``https://HOST:PORT`` into the gRPC target and
    the host the server's certificate must name."""

    def bad(reason: str) -> ConfigError:
        return ConfigError(f'"{address}" is not a coordinator address (expected HOST:PORT): {reason}')

    rest = address[len("https://") :] if address.startswith("https://") else address
    rest = rest.rstrip("/")
    if not rest or rest.startswith("http://"):
        raise bad("only TLS (https) is supported")
    if rest.startswith("["):
        host, sep, after = rest[1:].partition("]")
        if not sep:
            raise bad("unclosed '['")
        if not after.startswith(":"):
            raise bad("missing port")
        port = after[1:]
    else:
        host, sep, port = rest.rpartition(":")
        if not sep:
            raise bad("missing port")
    if not host:
        raise bad("missing host")
    if not port.isdigit() or int(port) > 65535:
        raise bad("the port is not a number")
    return rest, host


def parse_coordinator_list(text: str) -> List[str]:
    """``a:1, b:2`` as its addresses, each checked; empty entries and repeats dropped."""
    addresses: List[str] = []
    for address in (part.strip() for part in text.split(",")):
        if not address:
            continue
        parse_address(address)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise ConfigError(
            f"the coordinator list {text!r} names no address (expected HOST:PORT[,HOST:PORT...])"
        )
    return addresses


@dataclass(frozen=True)
class ClientConfig:
    """The coordinators to try, in order, and the client's TLS files."""

    #: ``HOST:PORT`` of each coordinator, in the order they are tried; never empty.
    coordinators: Tuple[str, ...]
    #: The cluster CA certificate (PEM).
    ca: Path
    #: The client certificate (PEM).
    cert: Path
    #: The client's private key (PEM).
    key: Path

    @classmethod
    def resolve(
        cls,
        coordinator: Union[None, str, Sequence[str]] = None,
        ca: Optional[PathLike] = None,
        cert: Optional[PathLike] = None,
        key: Optional[PathLike] = None,
        config: Optional[PathLike] = None,
    ) -> "ClientConfig":
        """Combines arguments, the environment and the config file, as the CLI does."""
        env = os.environ
        if isinstance(coordinator, (list, tuple)):
            coordinator = ",".join(coordinator)
        coordinator = coordinator or env.get("FERRY_COORDINATOR") or None
        ca = ca or env.get("FERRY_CA") or None
        cert = cert or env.get("FERRY_CERT") or None
        key = key or env.get("FERRY_KEY") or None
        config = config or env.get("FERRY_CONFIG") or None
        try:
            default: Optional[Path] = default_config_path()
        except ConfigError:
            default = None
        path: Optional[Path]
        if config is not None:
            path = Path(config)
        elif default is not None and default.exists():
            path = default
        else:
            path = None
        file: Dict[str, Any] = _read(path) if path is not None else {}
        base = path.parent if path is not None else Path()
        if "coordinator" in file and "coordinators" in file:
            raise ConfigError(f"the client config {path} gives both `coordinator` and `coordinators`; keep one")
        listed = file.get("coordinators")
        if coordinator is None:
            coordinator = file.get("coordinator")
        if coordinator is None and listed is not None:
            coordinator = ",".join(listed)
        if coordinator is None:
            where = str(default) if default is not None else "~/.config/ferry/config.toml"
            raise ConfigError(
                "no coordinator is configured: pass coordinator='HOST:PORT' (or set FERRY_COORDINATOR), "
                f"or start 'ferry dev', which writes {where}"
            )
        tls = file.get("tls", {})

        def pick(given: Optional[PathLike], name: str) -> Path:
            if given is not None:
                return Path(given)
            if name in tls:
                return base / tls[name]
            raise ConfigError(
                f"no TLS {name} file is configured: pass {name}=... (or set FERRY_{name.upper()}), "
                "or put it in the client config"
            )

        return cls(
            coordinators=tuple(parse_coordinator_list(str(coordinator))),
            ca=pick(ca, "ca"),
            cert=pick(cert, "cert"),
            key=pick(key, "key"),
        )


def _read(path: Path) -> Dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read the client config {path}: {error}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"the client config {path} is invalid: {error}") from None
    unknown = set(data) - {"coordinator", "coordinators", "tls"}
    unknown |= {f"tls.{k}" for k in set(data.get("tls", {})) - {"ca", "cert", "key"}}
    if unknown:
        raise ConfigError(f"the client config {path} is invalid: unknown field(s) {', '.join(sorted(unknown))}")
    return data
