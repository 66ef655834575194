"""DNS rebinding against the WARC downloader (`crawler/fetch.py`): the connection goes to the address
the network guard checked, on every redirect hop, and never to a second DNS answer.

The resolver is controlled in-process: ``socket.getaddrinfo`` answers the test's host names with
127.0.0.1 and the checked server's port the first time, and with another local server (the
"internal service") every time after. Both servers are on 127.0.0.1; no traffic goes anywhere else.
"""
import datetime
import http.server
import socket
import ssl
import threading

import pytest

from crawler.fetch import FetchError, PoliteFetcher

HOSTS = ("rebind.test", "hop.test")


class RecordingServer(http.server.ThreadingHTTPServer):
    """A local server that records (path, Host header) of each request and answers ``name``."""

    def __init__(self, name: str, tls: ssl.SSLContext | None = None):
        self.name, self.requests = name, []
        super().__init__(("127.0.0.1", 0), RecordingHandler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.port = self.server_address[1]

    def __enter__(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.shutdown()
        self.server_close()


class RecordingHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests.append((self.path, self.headers["Host"]))
        if self.path == "/start":  # a redirect to a second name, on the same port
            self.send_response(302)
            self.send_header("Location", f"http://hop.test:{self.server.port}/image")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self.server.name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def rebinding_dns(monkeypatch):
    """Install the hostile resolver; yields ``start(internal_port)`` and the list of names resolved."""
    real, resolved, internal = socket.getaddrinfo, [], {}

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in HOSTS:
            return real(host, port, *args, **kwargs)
        resolved.append(host)
        # First answer: the port asked for (the checked server). Any later answer: the internal service.
        return real("127.0.0.1", port if resolved.count(host) == 1 else internal["port"], *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield internal, resolved


@pytest.mark.parametrize("guard", ["allowed_network", "private_networks_allowed"])
def test_every_hop_connects_to_the_checked_address_not_a_second_dns_answer(rebinding_dns, guard):
    internal_port, resolved = rebinding_dns
    options = ({"allowed_networks": ("127.0.0.1/32",)} if guard == "allowed_network"
               else {"allow_private_networks": True})
    with RecordingServer("checked") as checked, RecordingServer("internal") as internal:
        internal_port["port"] = internal.port
        fetcher = PoliteFetcher(obey_robots=False, delay=0, timeout=2.0, **options)
        fetched = fetcher.fetch(f"http://rebind.test:{checked.port}/start")
    assert fetched.body == b"checked" and fetched.url == f"http://hop.test:{checked.port}/image"
    assert internal.requests == [], "a second DNS answer was connected to"
    # The Host header keeps the name; each hop's name was resolved exactly once (by the guard).
    assert checked.requests == [("/start", f"rebind.test:{checked.port}"), ("/image", f"hop.test:{checked.port}")]
    assert resolved == ["rebind.test", "hop.test"]


def _certificate(tmp_path, name: str) -> tuple[str, str]:
    """A self-signed certificate for the DNS name ``name`` (a PEM file) and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.mark.parametrize("served_name, ok", [("rebind.test", True), ("other.test", False)])
def test_https_checks_the_certificate_against_the_host_name_while_connecting_to_the_checked_address(
        tmp_path, rebinding_dns, served_name, ok):
    internal_port, resolved = rebinding_dns
    cert, key = _certificate(tmp_path, served_name)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with RecordingServer("checked", tls) as checked, RecordingServer("internal") as internal:
        internal_port["port"] = internal.port
        fetcher = PoliteFetcher(obey_robots=False, delay=0, timeout=2.0, allowed_networks=("127.0.0.1/32",),
                                ssl_context=ssl.create_default_context(cafile=cert))
        url = f"https://rebind.test:{checked.port}/image"
        if ok:  # the certificate names rebind.test, not 127.0.0.1: SNI and the check used the name
            assert fetcher.fetch(url).body == b"checked"
            assert checked.requests == [("/image", f"rebind.test:{checked.port}")]
        else:
            with pytest.raises(FetchError) as caught:
                fetcher.fetch(url)
            assert caught.value.reason == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in caught.value.detail
    assert internal.requests == [] and resolved == ["rebind.test"]
