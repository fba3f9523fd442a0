"""Print docker-compose.yml as a Swarm stack file: `scripts/swarm` deploys it together
with infra/swarm/stack.yml (docker stack deploy -c <this> -c infra/swarm/stack.yml).

Only what `docker stack deploy` cannot take or Swarm does otherwise is changed:
- the one-shot `secrets` service and its `secret-*` volumes go: Swarm secrets (made by
  scripts/swarm) are mounted at the same paths instead, by the override;
- the services named under `x-swarm-drop` in the override go (the demo peers: a
  community's swarm runs its servers; peers run on their users' own machines), and with
  them the volumes and networks nothing uses any more;
- `depends_on` goes (Swarm starts everything at once; every service waits for what it
  needs by itself);
- `tmpfs` entries become tmpfs mounts (Swarm ignores the short form);
- published ports become host-mode ports (Swarm ignores a host address such as
  127.0.0.1: see docs/operations.md);
- every environment variable named under `x-swarm-unset` in the override is removed from
  that service (an override can add or change variables, not remove them).

With `--dns-options` it prints the override's `x-swarm-dns-options` instead, one
"service option" per line, for scripts/swarm to apply after the deploy.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml


def _interpolate(text: str) -> str:
    """${VAR:-default} as compose reads it (long port syntax wants a number)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}",
                  lambda m: os.environ.get(m.group(1)) or m.group(2), text)


def _ports(ports: list[Any]) -> list[dict[str, Any]]:
    converted = []
    for port in ports:
        published, _, target = _interpolate(str(port)).rpartition(":")
        published = published.rpartition(":")[2]  # drop a host address
        converted.append({"target": int(target), "published": int(published),
                          "protocol": "tcp", "mode": "host"})
    return converted


def stack_from_compose(compose: dict[str, Any], unset: dict[str, list[str]],
                       drop: list[str]) -> dict[str, Any]:
    services = compose["services"]
    for name in ("secrets", *drop):
        services.pop(name, None)
    for name, service in services.items():
        service.pop("depends_on", None)
        service.pop("restart", None)  # deploy.restart_policy in the override
        if "volumes" in service:
            service["volumes"] = [v for v in service["volumes"]
                                  if not str(v).startswith("secret-")]
        for tmpfs in service.pop("tmpfs", []):
            # Swarm drops the short tmpfs syntax (and its options): a tmpfs mount instead.
            target = str(tmpfs).split(":")[0]
            service.setdefault("volumes", []).append({"type": "tmpfs", "target": target})
        if "ports" in service:
            service["ports"] = _ports(service["ports"])
        env = service.get("environment", {})
        for variable in unset.get(name, []):
            env.pop(variable, None)
    used = {str(v).split(":")[0] for service in services.values()
            for v in service.get("volumes", []) if isinstance(v, str)}
    compose["volumes"] = {k: v for k, v in compose.get("volumes", {}).items() if k in used}
    attached = {net for service in services.values() for net in service.get("networks", [])}
    compose["networks"] = {k: v for k, v in compose.get("networks", {}).items()
                           if k in attached}
    compose.setdefault("version", "3.8")  # the override says the same
    return compose


def dns_options(override: dict[str, Any]) -> list[tuple[str, str]]:
    """(service, resolver option) pairs under `x-swarm-dns-options`, in the file's order:
    what scripts/swarm sets after each deploy (a stack file has no `dns_opt`)."""
    return [(service, str(option))
            for service, options in (override.get("x-swarm-dns-options") or {}).items()
            for option in options]


def main(compose_file: str, override_file: str, *mode: str) -> int:
    override = yaml.safe_load(Path(override_file).read_text()) or {}
    if mode == ("--dns-options",):
        for service, option in dns_options(override):
            print(service, option)
        return 0
    compose = yaml.safe_load(Path(compose_file).read_text())
    stack = stack_from_compose(compose, override.get("x-swarm-unset", {}),
                               override.get("x-swarm-drop", []))
    yaml.safe_dump(stack, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
