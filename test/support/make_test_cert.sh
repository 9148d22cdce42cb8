#!/bin/sh
# Writes a throwaway self-signed TLS certificate for tests: DIR/cert.pem and
# DIR/key.pem (unencrypted RSA 2048, 0600), valid one day for CN=localhost with
# subjectAltName IP:127.0.0.1 and DNS:localhost. A client trusts it by using
# cert.pem as its root certificate (grpcio and tonic/rustls alike).
#
# basicConstraints CA:FALSE is on purpose: `openssl req -x509` otherwise marks
# the certificate CA:TRUE, and rustls (webpki) refuses a CA certificate as a
# server's own certificate (CaUsedAsEndEntity), while grpcio accepts both.
#
#   test/support/make_test_cert.sh DIR
#
# Used by test/python/conftest.py (the `tls_files` fixture) and the Elixir tests.
set -eu

if [ "$#" -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
mkdir -p "$dir"

# openssl prints key-generation progress on stderr: show it only on failure.
if ! output=$(umask 077 && openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=localhost \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -addext "basicConstraints=critical,CA:FALSE" -days 1 \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>&1); then
    printf '%s\n' "$output" >&2
    exit 1
fi
chmod 600 "$dir/key.pem"
chmod 644 "$dir/cert.pem"
