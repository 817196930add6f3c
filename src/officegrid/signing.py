"""Release signatures: Ed25519 over the release id (the Merkle root of its manifests).

Signing the root is enough: every manifest and chunk a worker uses is verified against the hash
that names it, so a valid signature on the root authenticates every byte of the release.
Keys are PEM files (``cryptography``); a key id is the first 16 hex characters of the blake3 of
the raw public key.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

DOMAIN = b"officegrid-release-v1:"  # binds signatures to this use


class SignatureError(Exception):
    """A key file is unusable or a release is not signed by a trusted key."""


def _raw(pub: Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(pub: Ed25519PublicKey) -> str:
    """Short id of a public key: 16 hex characters."""
    return blake3.blake3(_raw(pub)).hexdigest()[:16]


def create_keypair(private_path: Path, public_path: Path) -> str:
    """Write a new Ed25519 key pair (private key mode 0600, never overwritten); return its id.

    Raises:
        SignatureError: a file already exists.
    """
    for p in (private_path, public_path):
        if p.exists():
            raise SignatureError(f"{p} exists already; not overwriting a key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_id(key.public_key())


def load_private(path: Path) -> Ed25519PrivateKey:
    """Load a private key. Raises SignatureError naming the file."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"{path}: not a readable private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    """Load a public key. Raises SignatureError naming the file."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise SignatureError(f"{path}: not a readable public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key")
    return key


def sign_release(key: Ed25519PrivateKey, release_id: str) -> tuple[str, str]:
    """Sign a release id; return (base64 signature, key id)."""
    sig = key.sign(DOMAIN + release_id.encode("ascii"))
    return base64.b64encode(sig).decode("ascii"), key_id(key.public_key())


def verify_release(trusted: list[Ed25519PublicKey], release_id: str, signature: str | None,
                   signer: str | None) -> str:
    """Check a release's signature against the trusted keys; return the signer's key id.

    Raises:
        SignatureError: unsigned, signed by an untrusted key, or the signature is invalid.
    """
    if not signature:
        raise SignatureError(f"release {release_id[:12]} is not signed, and this worker only "
                             "runs releases signed by a trusted key")
    try:
        sig = base64.b64decode(signature, validate=True)
    except ValueError:
        raise SignatureError(f"release {release_id[:12]}: malformed signature") from None
    for pub in trusted:
        try:
            pub.verify(sig, DOMAIN + release_id.encode("ascii"))
            return key_id(pub)
        except InvalidSignature:
            continue
    raise SignatureError(f"release {release_id[:12]} is signed by key {signer or '?'}, which "
                         "is not among this worker's trusted keys (or the signature is invalid)")
