#!/usr/bin/env bash
# Smoke test of the binaries e2e/cluster/build.sh made: etcd, kube-apiserver (TLS, Node,RBAC,
# service-account tokens), kube-controller-manager and kube-scheduler as host processes on 127.0.0.1,
# then a few checks through kubectl. Each step has a deadline; every process it started and its temp
# dir are removed on exit, pass or fail. Usage: smoke.sh [BIN_DIR]   (default: the last line of build.sh)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
BIN="${1:-$("$here/build.sh" | tail -n1)}"
for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [[ -x "$BIN/$b" ]] || { echo "smoke.sh: $BIN/$b missing" >&2; exit 1; }
done
command -v openssl >/dev/null || { echo "smoke.sh: openssl not in PATH" >&2; exit 1; }

D="$(mktemp -d /tmp/rds-csi-smoke.XXXXXX)"
pids=()
cleanup() {
  local rc=$?
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  if (( rc != 0 )); then
    for f in "$D"/*.log; do [[ -f "$f" ]] && { echo "---- tail $f" >&2; tail -n 15 "$f" >&2; }; done
  fi
  rm -rf "$D"
  echo "smoke.sh: $([[ $rc == 0 ]] && echo PASS || echo "FAIL (rc=$rc)")" >&2
}
trap cleanup EXIT
step() { echo "smoke.sh: $*" >&2; }
# wait_for SECONDS CMD...: retry CMD every 0.5s until it succeeds or the deadline passes.
wait_for() { local end=$((SECONDS + $1)); shift; until "$@" >/dev/null 2>&1; do (( SECONDS < end )) || return 1; sleep 0.5; done; }
# Free TCP ports chosen by the OS (bound, read and released; the short race is acceptable for a smoke test).
freeport() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
ETCD_C=$(freeport); ETCD_P=$(freeport); API=$(freeport); KCM=$(freeport); SCHED=$(freeport)

step "certificates in $D"
cd "$D"
ossl() { openssl "$@" >/dev/null 2>&1; }
ossl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=rds-csi-e2e-ca
cert() { # name subject extensions
  ossl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$2"
  printf '%s\n' "$3" > "$1.ext"
  ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" -days 2 -extfile "$1.ext"
}
cert apiserver /CN=kube-apiserver "subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes.default.svc
extendedKeyUsage=serverAuth"
cert admin "/O=system:masters/CN=admin" "extendedKeyUsage=clientAuth"
ossl genrsa -out sa.key 2048
ossl rsa -in sa.key -pubout -out sa.pub
cat > admin.kubeconfig <<KC
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "https://127.0.0.1:$API", certificate-authority: $D/ca.crt}}]
users: [{name: admin, user: {client-certificate: $D/admin.crt, client-key: $D/admin.key}}]
contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]
current-context: e2e
KC
K() { timeout 20 "$BIN/kubectl" --kubeconfig "$D/admin.kubeconfig" "$@"; }

step "etcd on 127.0.0.1:$ETCD_C"
"$BIN/etcd" --name smoke --data-dir "$D/etcd" --unsafe-no-fsync \
  --listen-client-urls "http://127.0.0.1:$ETCD_C" --advertise-client-urls "http://127.0.0.1:$ETCD_C" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_P" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_P" \
  --initial-cluster "smoke=http://127.0.0.1:$ETCD_P" --listen-metrics-urls "" >"$D/etcd.log" 2>&1 &
pids+=($!)
wait_for 20 curl -fsS "http://127.0.0.1:$ETCD_C/health" || { step "etcd not healthy in 20s"; exit 1; }

step "kube-apiserver on 127.0.0.1:$API"
"$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_C" \
  --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API" \
  --tls-cert-file "$D/apiserver.crt" --tls-private-key-file "$D/apiserver.key" --client-ca-file "$D/ca.crt" \
  --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
  --service-account-issuer "https://127.0.0.1:$API" --service-account-key-file "$D/sa.pub" \
  --service-account-signing-key-file "$D/sa.key" --service-cluster-ip-range 10.0.0.0/24 \
  --allow-privileged=true --profiling=false >"$D/kube-apiserver.log" 2>&1 &
pids+=($!)
t0=$SECONDS
wait_for 90 K get --raw /readyz || { step "kube-apiserver not ready in 90s"; K get --raw '/readyz?verbose' >&2 || true; exit 1; }
step "kube-apiserver ready after $((SECONDS - t0))s"
K version >&2

step "kube-controller-manager on 127.0.0.1:$KCM, kube-scheduler on 127.0.0.1:$SCHED"
"$BIN/kube-controller-manager" --kubeconfig "$D/admin.kubeconfig" \
  --authentication-kubeconfig "$D/admin.kubeconfig" --authorization-kubeconfig "$D/admin.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$KCM" --leader-elect=false \
  --root-ca-file "$D/ca.crt" --service-account-private-key-file "$D/sa.key" --use-service-account-credentials \
  --cluster-signing-cert-file "$D/ca.crt" --cluster-signing-key-file "$D/ca.key" \
  --controllers '*,-node-lifecycle-controller' >"$D/kube-controller-manager.log" 2>&1 &
pids+=($!)
"$BIN/kube-scheduler" --kubeconfig "$D/admin.kubeconfig" \
  --authentication-kubeconfig "$D/admin.kubeconfig" --authorization-kubeconfig "$D/admin.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port "$SCHED" --leader-elect=false >"$D/kube-scheduler.log" 2>&1 &
pids+=($!)
wait_for 60 curl -fsSk "https://127.0.0.1:$KCM/healthz" || { step "kube-controller-manager /healthz not ok in 60s"; exit 1; }
wait_for 60 curl -fsSk "https://127.0.0.1:$SCHED/healthz" || { step "kube-scheduler /healthz not ok in 60s"; exit 1; }
# The service-account and root-CA publisher controllers fill a new namespace.
K create namespace smoke >&2
wait_for 60 K -n smoke get serviceaccount default || { step "no default ServiceAccount in 60s"; exit 1; }
wait_for 60 K -n smoke get configmap kube-root-ca.crt || { step "no kube-root-ca.crt ConfigMap in 60s"; exit 1; }
K -n smoke create token default --duration 1h >/dev/null || { step "TokenRequest failed"; exit 1; }
# A Node object (no kubelet) and a Deployment: the controllers make a pod, the scheduler binds it.
K apply -f - >&2 <<NODE
apiVersion: v1
kind: Node
metadata: {name: fake-node-1, labels: {kubernetes.io/hostname: fake-node-1}, annotations: {volumes.kubernetes.io/controller-managed-attach-detach: "true"}}
NODE
# A Node's status is not taken on create: set capacity and Ready through the status subresource.
K patch node fake-node-1 --subresource=status --type=merge -p '{"status": {
  "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110"}, "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110"},
  "conditions": [{"type": "Ready", "status": "True", "reason": "Fake", "message": "fake",
    "lastHeartbeatTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}' >&2
# The TaintNodesByCondition admission plugin taints a new Node not-ready; with the node lifecycle
# controller off nothing lifts it, so remove it by hand.
K taint node fake-node-1 node.kubernetes.io/not-ready:NoSchedule- >&2
K -n smoke create deployment web --image=registry.invalid/none:1 >&2
node_of_pod() { [[ -n "$(K -n smoke get pods -l app=web -o jsonpath='{.items[0].spec.nodeName}')" ]]; }
wait_for 60 node_of_pod || { step "no pod of the Deployment scheduled in 60s"; K -n smoke get pods -o wide >&2 || true
  K -n smoke describe pods >&2 || true; K get node fake-node-1 -o yaml >&2 || true; exit 1; }
K -n smoke get pods -o wide >&2
step "checks passed"
