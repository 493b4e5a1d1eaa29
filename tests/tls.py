"""A self-signed client certificate whose key is encrypted with a passphrase (with the openssl CLI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the encrypted key")


def encrypted_client_key(folder: Path, passphrase: str) -> tuple[Path, Path]:
    """(certificate, key) in `folder`, the key PKCS#8-encrypted with `passphrase` (given on stdin,
    never on a command line)."""
    cert, key = folder / "client.crt", folder / "client.key"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-subj", "/CN=eventsink-test"),
            *("-keyout", str(key), "-out", str(cert), "-passout", "stdin"),
        ],
        input=passphrase.encode(),
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key
