"""``relaybox tls init``: a local certificate authority and a server certificate for this box.

The release build of "SMS Gateway for Android" refuses plain HTTP except to 127.0.0.1, and
trusts user-installed CAs (ANDROID-PROTOCOL.md §1). So relaybox makes its own small CA (kept in
``<data_dir>/tls``), installs nothing itself, and signs a server certificate for the box's host
names and LAN addresses; nginx (``packaging/nginx/relaybox.conf``) terminates TLS with it in
front of waitress. The phone trusts the CA after the user installs ``ca.crt`` as a CA
certificate (the pairing page offers it for download).

Files: ``ca.key`` / ``ca.crt`` (the CA, 10 years), ``server.key`` / ``server.crt`` (825 days),
``fullchain.crt`` (server + CA, for nginx). Keys are written mode 0600.
"""
from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - cryptography is imported when a certificate is made
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

CA_DAYS = 3650
SERVER_DAYS = 825


def tls_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "tls")


def lan_addresses() -> list[str]:
    """This box's own addresses: the one of the default route, and those of its host name."""
    found: list[str] = []
    for family, probe in ((socket.AF_INET, ("192.0.2.1", 9)), (socket.AF_INET6, ("2001:db8::1", 9))):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect(probe)  # UDP: no packet is sent; the kernel picks the source address
                found.append(s.getsockname()[0])
        except OSError:
            pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None):
            found.append(str(info[4][0]))
    except OSError:
        pass
    out: list[str] = []
    for a in found:
        try:
            ip = ipaddress.ip_address(a.split("%")[0])
        except ValueError:
            continue
        if ip.is_loopback or ip.is_link_local or ip.is_unspecified or str(ip) in out:
            continue
        out.append(str(ip))
    return out


def default_hosts() -> list[str]:
    name = socket.gethostname().split(".")[0] or "relaybox"
    hosts = [name, f"{name}.local", "localhost"]
    fqdn = socket.getfqdn()
    if fqdn and "." in fqdn and fqdn not in hosts and not fqdn.endswith(".localdomain"):
        hosts.insert(1, fqdn)
    return hosts


def _write(path: str, data: bytes, secret: bool = False) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(label: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "relaybox"),
                      x509.NameAttribute(NameOID.COMMON_NAME, f"relaybox local CA ({label})"[:64])])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _make_server(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, hosts: list[str],
                 ips: list[str]) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "relaybox"),
                                     x509.NameAttribute(NameOID.COMMON_NAME, (hosts or ips)[0][:64])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, content_commitment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _give_to_data_dir_owner(data_dir: str, out_dir: str) -> None:
    """``sudo relaybox tls init`` on a data dir that belongs to the service user: hand the files
    to that user, or the server (not root) could not read its own CA certificate (the directory
    is 0700) and a later ``relaybox tls init`` as that user could not renew them."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return
    st = os.stat(data_dir)
    if st.st_uid == 0:
        return
    for path in [out_dir] + [os.path.join(out_dir, n) for n in os.listdir(out_dir)]:
        os.chown(path, st.st_uid, st.st_gid)


def init_tls(data_dir: str, hosts: list[str] | None = None, ips: list[str] | None = None, *,
             new_ca: bool = False, lan: bool = True) -> dict[str, Any]:
    """Create (or keep) the CA and (re)issue the server certificate. Returns what was written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out_dir = tls_dir(data_dir)
    os.makedirs(out_dir, mode=0o700, exist_ok=True)
    hosts = list(dict.fromkeys((hosts or []) + default_hosts()))
    for h in hosts:
        try:
            x509.DNSName(h)
        except ValueError as exc:
            raise ValueError(f"--host {h!r}: {exc}") from None
    addrs: list[str] = []
    for a in (ips or []) + (lan_addresses() if lan else []) + ["127.0.0.1", "::1"]:
        try:
            text = str(ipaddress.ip_address(a))
        except ValueError:
            raise ValueError(f"--ip {a!r} is not an IP address") from None
        if text not in addrs:
            addrs.append(text)
    ca_key_path, ca_path = os.path.join(out_dir, "ca.key"), os.path.join(out_dir, "ca.crt")
    created_ca = new_ca or not (os.path.exists(ca_key_path) and os.path.exists(ca_path))
    if created_ca:
        ca_key, ca = _make_ca(hosts[0])
        _write(ca_key_path, _key_pem(ca_key), secret=True)
        _write(ca_path, ca.public_bytes(serialization.Encoding.PEM))
    else:
        with open(ca_key_path, "rb") as fh:
            loaded = serialization.load_pem_private_key(fh.read(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path}: not an EC key made by relaybox tls init")
        ca_key = loaded
        with open(ca_path, "rb") as fh:
            ca = x509.load_pem_x509_certificate(fh.read())
    key, cert = _make_server(ca_key, ca, hosts, addrs)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    _write(os.path.join(out_dir, "server.key"), _key_pem(key), secret=True)
    _write(os.path.join(out_dir, "server.crt"), pem)
    _write(os.path.join(out_dir, "fullchain.crt"), pem + ca.public_bytes(serialization.Encoding.PEM))
    _give_to_data_dir_owner(data_dir, out_dir)
    return {
        "dir": out_dir, "ca_created": created_ca, "ca": ca_path, "fullchain": os.path.join(out_dir, "fullchain.crt"),
        "server_key": os.path.join(out_dir, "server.key"), "hosts": hosts, "ips": addrs,
        "ca_sha256": ca.fingerprint(hashes.SHA256()).hex(":").upper(),
        "server_not_after": cert.not_valid_after_utc.isoformat(),
    }


# -- command line ----------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from relaybox.cli import config_from_args

    config = config_from_args(args)
    try:
        info = init_tls(config.data_dir, args.host or [], args.ip or [], new_ca=args.new_ca, lan=not args.no_lan)
    except ValueError as exc:
        print(f"relaybox tls init: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
        return 0
    print(("Created a new local CA" if info["ca_created"] else "Kept the existing local CA") + f" in {info['dir']}")
    print(f"  CA certificate (install it on each phone as a CA certificate): {info['ca']}")
    print(f"  CA SHA-256 fingerprint: {info['ca_sha256']}")
    print(f"  server certificate for: {', '.join(info['hosts'] + info['ips'])} (until {info['server_not_after']})")
    print(f"  nginx: ssl_certificate {info['fullchain']}; ssl_certificate_key {info['server_key']};")
    print("Next: install packaging/nginx/relaybox.conf, set public_url = \"https://<host>\" in config.toml, "
          "and pair a phone with `relaybox device pair` (its pairing page offers the CA certificate).")
    return 0


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("tls", help="local CA and server certificate for HTTPS (phones need it)")
    tsub = p.add_subparsers(dest="tls_command", required=True)
    i = tsub.add_parser("init", parents=[common], help="create the CA (once) and a server certificate")
    i.add_argument("--host", action="append", help="a host name to include (repeat); the box's names are added")
    i.add_argument("--ip", action="append", help="an IP address to include (repeat); LAN addresses are added")
    i.add_argument("--no-lan", action="store_true", help="do not add the detected LAN addresses")
    i.add_argument("--new-ca", action="store_true", help="replace the CA too (phones must install the new one)")
    i.add_argument("--json", action="store_true", help="print what was written as one JSON line")
    i.set_defaults(func=cmd_init)
