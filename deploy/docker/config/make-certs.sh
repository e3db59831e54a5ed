#!/bin/sh
# The compose file's one-shot `certs` service: a cluster CA and one certificate
# per part, made once into the certs directory (kept across restarts).
set -eu
cd /certs
[ -f ca.pem ] || ferry certs init --dir .
for id in 1 2 3; do
  # Workers dial coordinator-N; clients on the host dial 127.0.0.1.
  [ -f "member-$id.pem" ] || ferry certs issue --dir . --role coordinator --member "$id" \
    --dns "coordinator-$id" --ip 127.0.0.1
done
for worker in worker-1 worker-2; do
  [ -f "$worker.pem" ] || ferry certs issue --dir . --role worker --name "$worker"
done
[ -f alice.pem ] || ferry certs issue --dir . --role client --name alice
# The coordinators run as uid 10001 and read their own key; nobody else's.
for id in 1 2 3; do chown 10001:10001 "member-$id.pem" "member-$id-key.pem"; done
chmod 0644 ca.pem
echo "certificates ready in /certs"
