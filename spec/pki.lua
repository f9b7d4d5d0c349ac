-- Test PKI for the TLS specs: a CA and certificates made by openssl at test
-- time (nothing secret lives in the repository), and a non-blocking shell.
local helpers = require "spec.helpers"

local M = {}

-- Runs a shell command without blocking the spec's loop (an upstream in this
-- process may have to answer meanwhile); returns exit code, stdout..stderr.
function M.sh(dir, cmd)
  local pid = assert(gw.process.spawn({ "/bin/sh", "-c", "{ " .. cmd .. "; } < /dev/null" },
    { stdout = dir .. "/sh.out", stderr = dir .. "/sh.err" }))
  local _, code = helpers.wait_exit(pid, 20)
  return code, helpers.read_file(dir .. "/sh.out") .. helpers.read_file(dir .. "/sh.err")
end

-- A test CA and leaf certificates (ECDSA P-256 and RSA), including an expired one.
function M.make()
  local dir = helpers.tmpdir()
  local script = [[
set -e
cd "$1"
ec="-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes"
openssl req -x509 $ec -days 2 -subj "/CN=Moongate Test CA" -keyout ca.key -out ca.pem
leaf() { # name SAN keyopts
  openssl req $3 -subj "/CN=$1" -keyout $1.key -out $1.csr
  printf "subjectAltName=%s\n" "$2" > $1.ext
  openssl x509 -req -in $1.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile $1.ext -out $1.pem
}
leaf localhost "DNS:localhost,IP:127.0.0.1" "$ec"
leaf api "DNS:api.example.test" "-newkey rsa:2048 -nodes"
leaf wild "DNS:*.apps.example.test" "$ec"
leaf renewed "DNS:localhost,IP:127.0.0.1" "$ec"
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout localhost-rsa.key -out localhost-rsa.csr
openssl x509 -req -in localhost-rsa.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile localhost.ext -out localhost-rsa.pem
leaf mallory "email:mallory@example.test" "$ec"
openssl req -x509 $ec -days 2 -subj "/CN=Moongate Test Clients CA" -keyout clients-ca.key -out clients-ca.pem
openssl req $ec -subj "/O=Example/CN=alice" -keyout alice.key -out alice.csr
printf "subjectAltName=email:alice@example.test,URI:spiffe://example.test/alice\n" > alice.ext
openssl x509 -req -in alice.csr -CA clients-ca.pem -CAkey clients-ca.key -CAcreateserial -days 2 -extfile alice.ext -out alice.pem
mkdir -p ca.d && : > ca.d/index.txt && echo 01 > ca.d/serial
printf "[ca]\ndefault_ca=d\n[d]\ndir=ca.d\ndatabase=ca.d/index.txt\nnew_certs_dir=ca.d\nserial=ca.d/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n" > ca.cnf
openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in localhost.csr \
  -startdate 20200101000000Z -enddate 20200102000000Z -out expired.pem
]]
  helpers.write_file(dir .. "/pki.sh", script)
  local code, out = M.sh(dir, "sh " .. dir .. "/pki.sh " .. dir)
  assert(code == 0, "making test certificates failed: " .. out)
  return dir
end

return M
