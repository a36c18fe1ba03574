#!/usr/bin/env bash
# Validates the Kubernetes example in deploy/kubernetes/ two ways:
#  1. schema: kubernetes-validate (from PyPI; it ships the API schemas, so this runs
#     offline once installed), strict, so a misspelt field fails instead of being ignored;
#     against the oldest and newest Kubernetes versions we claim (K8S_VERSIONS);
#  2. policy: what the schema cannot know but docs/SCALING.md promises: exactly one
#     replica, a persistent volume, /healthz liveness and /readyz readiness probes,
#     1 CPU / 512Mi limits, non-root with a read-only root filesystem.
# It also feeds the validator a deliberately broken copy, so a validator that accepts
# anything cannot make this test pass. Prints PASS/FAIL lines and a closing count;
# exits non-zero on any failure.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
dir="$root/deploy/kubernetes"
versions="${K8S_VERSIONS:-1.32 1.37}"

if ! command -v kubernetes-validate >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check 'kubernetes-validate>=1.37,<2' >&2
fi

passed=0
failed=0
pass() { echo "PASS: $*"; passed=$((passed + 1)); }
fail() { echo "FAIL: $*"; failed=$((failed + 1)); }

shopt -s nullglob
manifests=("$dir"/*.yaml)
if [ "${#manifests[@]}" -eq 0 ]; then
    fail "no manifests in $dir"
fi

for v in $versions; do
    for f in "${manifests[@]}"; do
        if out=$(kubernetes-validate --strict --quiet -k "$v" "$f" 2>&1); then
            pass "schema $(basename "$f") (Kubernetes $v, strict)"
        else
            fail "schema $(basename "$f") (Kubernetes $v, strict): $out"
        fi
    done
done

# Negative control: an unknown field and a wrongly typed one must both be rejected.
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
sts_file="$(grep -l '^kind: StatefulSet' "${manifests[@]}" | head -n 1 || true)"
if [ -n "$sts_file" ]; then
    sed -e 's/^\(  *\)replicas: 1.*/\1replicas: "one"/' "$sts_file" >"$tmp/bad-type.yaml"
    sed -e 's/enableServiceLinks:/enableServiceLink:/' "$sts_file" >"$tmp/bad-field.yaml"
fi
for bad in "$tmp/bad-type.yaml" "$tmp/bad-field.yaml"; do
    if [ ! -s "$bad" ]; then
        fail "no StatefulSet manifest to break for the negative control"
    elif kubernetes-validate --strict --quiet "$bad" >/dev/null 2>&1; then
        fail "validator accepted a broken manifest ($(basename "$bad"))"
    else
        pass "validator rejects a broken manifest ($(basename "$bad"))"
    fi
done

# Policy checks, in Python with PyYAML (a dependency of kubernetes-validate).
policy_out=$(python3 - "${manifests[@]}" <<'PY'
import sys, yaml

docs = [d for f in sys.argv[1:] for d in yaml.safe_load_all(open(f)) if d]
sts = [d for d in docs if d["kind"] == "StatefulSet"]
svcs = [d for d in docs if d["kind"] == "Service"]

def check(ok, what):
    print(("PASS: " if ok else "FAIL: ") + "policy " + what)

check(len(sts) == 1, "exactly one StatefulSet")
if sts:
    s = sts[0]["spec"]
    pod = s["template"]["spec"]
    c = pod["containers"][0]
    check(s.get("replicas") == 1, "replicas is 1 (single writer)")
    claims = {t["metadata"]["name"] for t in s.get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    check(bool(claims & set(mounts)), "a volumeClaimTemplate is mounted")
    state_args = c.get("args", [])
    sf = state_args[state_args.index("--state-file") + 1] if "--state-file" in state_args else ""
    check(any(sf.startswith(p.rstrip("/") + "/") for n, p in mounts.items() if n in claims),
          "--state-file lives on the persistent volume")
    lp = c.get("livenessProbe", {}).get("httpGet", {}).get("path")
    rp = c.get("readinessProbe", {}).get("httpGet", {}).get("path")
    check(lp == "/healthz", "liveness probe is GET /healthz")
    check(rp == "/readyz", "readiness probe is GET /readyz")
    lim = c.get("resources", {}).get("limits", {})
    check(str(lim.get("cpu")) in ("1", "1000m") and lim.get("memory") == "512Mi",
          "limits are 1 CPU / 512Mi")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "runs as non-root")
    check(csc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    check(csc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    names = {d["metadata"]["name"] for d in svcs}
    check(sts[0]["spec"].get("serviceName") in names, "serviceName names a Service in the manifest")
    sel = sts[0]["spec"]["selector"]["matchLabels"]
    check(any(d["spec"].get("selector") == sel and d["spec"].get("clusterIP") != "None"
              for d in svcs), "a client Service selects the pod")
PY
)
while IFS= read -r line; do
    case "$line" in
        PASS:*) pass "${line#PASS: }" ;;
        FAIL:*) fail "${line#FAIL: }" ;;
        *) [ -n "$line" ] && echo "$line" ;;
    esac
done <<<"$policy_out"

echo "k8s_validate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
