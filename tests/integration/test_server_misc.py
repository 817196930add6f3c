"""TLS, blob garbage collection, the OpenAPI schema and malformed requests."""

from __future__ import annotations

import datetime
import os
import time

import httpx
import pytest

from conftest import Grid
from grid import wait_for
from officegrid.client import ApiError, Client


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_clients_verify(tmp_path):
    cert, key = _self_signed(tmp_path)
    g = Grid(tmp_path, None)
    g.server.extra = ["--tls-cert", str(cert), "--tls-key", str(key)]
    try:
        g.start()
        assert g.server.url.startswith("https://")
        with Client(g.server.url, g.server.admin_token, ca=cert) as c:
            assert c.health()["ok"]
        with Client(g.server.url, g.server.admin_token, max_retry_time=0.5) as c, \
                pytest.raises((httpx.ConnectError, ApiError)):
            c.health()  # self-signed and not trusted: refused
    finally:
        g.close()


def test_unreferenced_blobs_are_collected(tmp_path):
    g = Grid(tmp_path, None).start({"OFFICEGRID_BLOB_GC_INTERVAL": "0.3",
                                    "OFFICEGRID_BLOB_GC_GRACE": "1"})
    try:
        orphan = g.admin.put_blob(b"nobody references me")
        from test_leases import make_job, make_release

        make_release(g.admin)
        job = make_job(g.admin, units=1)
        kept = next(iter(g.admin.units(job["id"])))["input"]
        path = g.server.data_dir / "blobs" / orphan[:2] / orphan[2:]
        old = time.time() - 10
        os.utime(path, (old, old))
        wait_for(lambda: not path.exists(), 30, what="orphan blob removed")
        assert g.admin.get_blob(kept)  # referenced input still there
    finally:
        g.close()


def test_openapi_and_bad_requests(grid):
    schema = httpx.get(grid.server.url + "/api/v1/openapi.json").json()
    assert "/api/v1/lease" in schema["paths"] and "/api/v1/jobs" in schema["paths"]
    with pytest.raises(ApiError) as exc:
        grid.admin._json("POST", "/jobs", json={"entry": "x:y"})
    assert exc.value.status == 422 and "units" in exc.value.message
    with pytest.raises(ApiError) as exc:
        grid.admin.request("PUT", "/blobs/" + "0" * 64, content=b"not zstd")
    assert exc.value.status == 422 and "rejected" in exc.value.message
    with pytest.raises(ApiError) as exc:
        grid.admin.job(999)
    assert exc.value.status == 404 and "no job 999" in exc.value.message


def test_transfer_slots_cap_a_stampede(tmp_path):
    """200 clients pulling at once with a cap of 8: no errors, never more than 8 at once."""
    import threading

    from officegrid.backoff import Backoff

    g = Grid(tmp_path, None).start({"OFFICEGRID_TRANSFER_SLOTS": "8",
                                    "OFFICEGRID_TRANSFER_RETRY_AFTER": "0.05"})
    try:
        blobs = [g.admin.put_blob(os.urandom(200_000) + bytes([i])) for i in range(4)]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def pull():
            with Client(g.server.url, g.server.admin_token, max_retry_time=300,
                        backoff=Backoff(0.05, 1.0)) as c:
                try:
                    got = c.fetch_blobs(blobs)
                    assert [h for h, _ in got] == blobs
                except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                    with lock:
                        errors.append(exc)

        threads = [threading.Thread(target=pull) for _ in range(200)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert errors == []
        stats = g.admin._json("GET", "/transfers")
        assert stats["cap"] == 8 and 1 <= stats["peak"] <= 8
        # Every slot is given back (just after each answer is sent).
        wait_for(lambda: g.admin._json("GET", "/transfers")["held"] == 0, 10,
                 what="slots released")
    finally:
        g.close()


def test_retention_keeps_last_releases_per_channel(tmp_path):
    g = Grid(tmp_path, None).start({"OFFICEGRID_KEEP_RELEASES": "2",
                                    "OFFICEGRID_BLOB_GC_INTERVAL": "0.3",
                                    "OFFICEGRID_BLOB_GC_GRACE": "0.5"})
    try:
        from grid import publish

        ids, files = [], []
        for i in range(4):
            d = tmp_path / f"r{i}"
            d.mkdir()
            (d / "job.py").write_text(f"VERSION = {i}\n")
            ids.append(publish(g.admin, d))
            files.append(b"VERSION = %d\n" % i)
        from officegrid.cas import hash_bytes

        def blob_exists(data: bytes) -> bool:
            h = hash_bytes(data)
            return (g.server.data_dir / "blobs" / h[:2] / h[2:]).exists()

        wait_for(lambda: not blob_exists(files[0]) and not blob_exists(files[1]), 30,
                 what="old releases collected")
        assert blob_exists(files[2]) and blob_exists(files[3])
        rows = {r["id"]: r for r in g.admin.releases()}
        assert rows[ids[0]]["pruned_at"] and rows[ids[1]]["pruned_at"]
        assert rows[ids[2]]["pruned_at"] is None
        with pytest.raises(ApiError) as exc:
            g.admin.promote("worker", release=ids[0])
        assert "pruned" in exc.value.message
        g.admin.promote("worker", release=ids[2])  # rollback within the kept window works
    finally:
        g.close()
