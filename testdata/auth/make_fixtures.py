#!/usr/bin/env python3
"""Writes the dkimpy-signed fixtures that crates/auth's verifier tests read (run once; commit the output).

Key: crates/auth/testdata/rsa-2048-pkcs1.pem, d=signer.test, s=s1. Output: dkimpy-signed.eml (valid) and
dkimpy-body-altered.eml (the same signature, one body word changed). Needs dkimpy (requirements-test.txt)."""

from pathlib import Path

import dkim

HERE = Path(__file__).resolve().parent
KEY = HERE.parents[1] / "crates" / "auth" / "testdata" / "rsa-2048-pkcs1.pem"
MESSAGE = (b"From: Alice <alice@signer.test>\r\nTo: bob@receiver.test\r\nSubject: quarterly report\r\n"
           b"Date: Mon, 1 Jun 2026 10:00:00 +0000\r\nMessage-ID: <r1@signer.test>\r\n\r\n"
           b"The numbers are in.\r\n")

signature = dkim.sign(MESSAGE, b"s1", b"signer.test", KEY.read_bytes(),
                      include_headers=[b"From", b"To", b"Subject", b"Date", b"Message-ID"])
(HERE / "dkimpy-signed.eml").write_bytes(signature + MESSAGE)
(HERE / "dkimpy-body-altered.eml").write_bytes(signature + MESSAGE.replace(b"in.", b"out."))
