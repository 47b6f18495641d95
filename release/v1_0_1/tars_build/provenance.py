"""SLSA provenance v1 in an in-toto Statement v1, signed in a DSSE envelope with a local key.

The envelope is the format cosign, in-toto and the SLSA tooling read (``payloadType``
``application/vnd.in-toto+json``, one envelope per line in a ``.intoto.jsonl`` file). A local key proves
only that whoever holds it signed these digests; a CI with an identity signs keyless instead (Sigstore:
an OIDC identity of the workflow, a short-lived Fulcio certificate and a Rekor transparency-log entry),
which this machine cannot do (no network identity).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
# What the fields of externalParameters/internalParameters mean is described in the README ("Deploying").
BUILD_TYPE = "urn:tars:buildtype:python-dists:v1"


class ProvenanceError(Exception):
    """A key that cannot be loaded, or an envelope that does not verify; the message says which and why."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def statement(
    subjects: Sequence[tuple[str, str]],
    *,
    external: Mapping[str, Any],
    internal: Mapping[str, Any],
    resolved: Sequence[Mapping[str, Any]],
    builder_id: str,
    invocation_id: str,
    started: str,
    finished: str,
    byproducts: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The in-toto Statement: one subject per artifact (name, sha256) and the SLSA v1 predicate."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in subjects],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": dict(external),
                "internalParameters": dict(internal),
                "resolvedDependencies": [dict(r) for r in resolved],
            },
            "runDetails": {
                "builder": {"id": builder_id},
                "metadata": {"invocationId": invocation_id, "startedOn": started, "finishedOn": finished},
                "byproducts": [dict(b) for b in byproducts],
            },
        },
    }


def generate_key(path: Path) -> Path:
    """A new ECDSA P-256 private key (PKCS#8 PEM, mode 0600) at ``path`` and its public key at ``path.pub``.

    P-256 because every DSSE verifier takes it (cosign's ``--key``, in-toto, securesystemslib).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if path.exists():
        raise ProvenanceError(f"{path} exists: choose another path (an existing key is never overwritten)")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pub


def load_signer(path: Path, password: bytes | None = None) -> Any:
    """A securesystemslib ``CryptoSigner`` for the PEM private key at ``path`` (ECDSA, Ed25519 or RSA)."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]

    try:
        key = load_pem_private_key(path.read_bytes(), password=password)
    except FileNotFoundError:
        raise ProvenanceError(f"signing key {path} does not exist: create one with the keygen command") from None
    except (ValueError, TypeError) as exc:
        raise ProvenanceError(f"signing key {path} cannot be loaded ({exc}): give a PEM private key") from None
    try:
        public = SSlibKey.from_crypto(key.public_key())
    except Exception as exc:
        raise ProvenanceError(
            f"signing key {path}: unsupported key type ({exc}): use ECDSA P-256, Ed25519 or RSA"
        ) from None
    return CryptoSigner(key, public)


def public_pem(signer: Any) -> str:
    return str(signer.public_key.keyval["public"])


def sign(stmt: Mapping[str, Any], signer: Any) -> dict[str, Any]:
    """The DSSE envelope (as a dict) of ``stmt``, signed by ``signer``."""
    from securesystemslib.dsse import Envelope

    payload = json.dumps(stmt, sort_keys=True, separators=(",", ":")).encode()
    envelope = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
    envelope.sign(signer)
    return dict(envelope.to_dict())


def verify(envelope: Mapping[str, Any], public_key_pem: str) -> dict[str, Any]:
    """The statement inside ``envelope`` once its signature verifies with the PEM public key; else raises."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey  # type: ignore[attr-defined]

    try:
        key = SSlibKey.from_crypto(load_pem_public_key(public_key_pem.encode()))
    except (ValueError, TypeError) as exc:
        raise ProvenanceError(f"the public key cannot be loaded ({exc}): give the PEM public key") from None
    try:
        env = Envelope.from_dict(copy.deepcopy(dict(envelope)))  # from_dict consumes what it reads
    except Exception as exc:
        raise ProvenanceError(f"not a DSSE envelope ({exc})") from None
    if env.payload_type != PAYLOAD_TYPE:
        raise ProvenanceError(f"payloadType is {env.payload_type!r}, expected {PAYLOAD_TYPE!r}")
    try:
        env.verify([key], 1)
    except VerificationError as exc:
        raise ProvenanceError(f"the signature does not verify with this public key ({exc})") from None
    stmt: dict[str, Any] = json.loads(env.payload)
    if stmt.get("_type") != STATEMENT_TYPE or stmt.get("predicateType") != PREDICATE_TYPE:
        raise ProvenanceError("the envelope does not hold an in-toto v1 statement with a SLSA v1 predicate")
    return stmt


def check_subjects(stmt: Mapping[str, Any], folder: Path) -> list[str]:
    """Problems with the files the statement names, in ``folder``: missing or with another digest."""
    problems = []
    for subject in stmt.get("subject", []):
        path = folder / subject["name"]
        if not path.is_file():
            problems.append(f"{subject['name']}: missing from {folder}")
        elif sha256_file(path) != subject["digest"]["sha256"]:
            problems.append(f"{subject['name']}: sha256 differs from the signed statement")
    return problems


def read_envelopes(path: Path) -> list[dict[str, Any]]:
    """The envelopes of a ``.intoto.jsonl`` file (one JSON document per line)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def payload_of(envelope: Mapping[str, Any]) -> dict[str, Any]:
    """The statement inside ``envelope`` WITHOUT verifying it (for display only)."""
    result: dict[str, Any] = json.loads(base64.b64decode(envelope["payload"]))
    return result
