"""Helpers for the `tern send` / `tern sendmail` end-to-end tests: an aiosmtpd sink, a silent
server, a fake DNS server and a self-signed certificate."""
