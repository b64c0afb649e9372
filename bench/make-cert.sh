#!/usr/bin/env bash
# A CA and an ECDSA P-256 certificate for localhost / 127.0.0.1 signed by it,
# for the TLS benchmarks: DIR/ca.pem (what the generator trusts with
# --tls-ca; webpki refuses a CA certificate as the server's own),
# DIR/tls-cert.pem and DIR/tls-key.pem (the gateway's server.tls_cert/_key).
#   bench/make-cert.sh DIR
set -euo pipefail
dir=$1
command -v openssl >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl; }
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/ca-key.pem" \
  -out "$dir/ca.pem" -subj /CN=bench-ca -days 30 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/tls-key.pem" \
  -out "$dir/tls.csr" -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > "$dir/tls.ext"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" -CAcreateserial \
  -out "$dir/tls-cert.pem" -days 30 -extfile "$dir/tls.ext" 2>/dev/null
