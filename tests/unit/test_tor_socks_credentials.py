"""onion_http_client sends its SOCKS5 username/password (RFC 1929): what tor's
IsolateSOCKSAuth keys circuits on. A fake SOCKS server on 127.0.0.1 notes them."""

from __future__ import annotations

import asyncio

import pytest
from nyth.tor.endpoints import SocksEndpoint
from nyth.tor.socks import onion_http_client
from python_socks import ProxyError

ONION = "http://" + "a" * 56 + ".onion/v1/bundle"


class FakeSocks:
    def __init__(self) -> None:
        self.offered: list[bytes] = []
        self.credentials: list[tuple[str, str]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            _, count = await reader.readexactly(2)
            methods = await reader.readexactly(count)
            self.offered.append(methods)
            if 2 in methods:
                writer.write(b"\x05\x02")
                _, ulen = await reader.readexactly(2)
                user = await reader.readexactly(ulen)
                plen = (await reader.readexactly(1))[0]
                self.credentials.append((user.decode(), (await reader.readexactly(plen)).decode()))
                writer.write(b"\x01\x00")
            else:
                writer.write(b"\x05\x00")
            await reader.readexactly(4)                       # VER CMD RSV ATYP(domain)
            host_len = (await reader.readexactly(1))[0]
            await reader.readexactly(host_len + 2)
            writer.write(b"\x05\x05\x00\x01" + bytes(6))      # connection refused
            await writer.drain()
        finally:
            writer.close()


async def test_each_client_sends_its_own_credentials() -> None:
    fake = FakeSocks()
    server = await asyncio.start_server(fake.serve, "127.0.0.1", 0)
    socks = SocksEndpoint("127.0.0.1", server.sockets[0].getsockname()[1])
    try:
        for username, password in (("nyth-mailbox-post", "one"), ("nyth-mailbox-post", "two")):
            async with onion_http_client(socks, username=username, password=password) as http:
                with pytest.raises(ProxyError, match="refused"):
                    await http.get(ONION)
        async with onion_http_client(socks) as http:   # P2P and groups: no credentials
            with pytest.raises(ProxyError, match="refused"):
                await http.get(ONION)
    finally:
        server.close()
    assert fake.credentials == [("nyth-mailbox-post", "one"), ("nyth-mailbox-post", "two")]
    assert 2 not in fake.offered[-1]
