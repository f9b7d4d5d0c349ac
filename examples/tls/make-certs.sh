#!/bin/sh
# A local test CA and a certificate for localhost, for examples/tls/gateway.lua.
# Writes certs/ next to this script. Never use these outside your machine.
set -e
dir=$(cd "$(dirname "$0")" && pwd)/certs
mkdir -p "$dir"
cd "$dir"
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -days 30 -subj "/CN=Moongate Example CA" -keyout ca.key -out ca.pem 2>/dev/null
openssl req $ec -subj "/CN=localhost" -keyout localhost.key -out localhost.csr 2>/dev/null
printf "subjectAltName=DNS:localhost,DNS:backend.localhost,IP:127.0.0.1\n" > localhost.ext
openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
  -extfile localhost.ext -out localhost.pem 2>/dev/null
rm -f localhost.csr localhost.ext ca.srl
echo "certificates in $dir (CA: $dir/ca.pem)"
