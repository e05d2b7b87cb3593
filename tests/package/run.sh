#!/usr/bin/env bash
# The Debian package, installed on this machine and purged again:
#   - lintian finds nothing (every override in the package says why);
#   - dpkg -i creates the `outpost` system user, installs the binary, the
#     conffile and the unit; systemd-analyze verify accepts the unit;
#   - the packaged binary, run as the service runs it (the unit's ExecStart,
#     user and StateDirectory), serves a signed demo bundle, answers, and
#     drains on SIGTERM; `outpost run` from the package gives the demo's label;
#   - an edited conffile survives reinstalling; purge removes the package,
#     its conffile and /var/lib/outpost.
#
#   bash tests/package/run.sh [PATH.deb]
#
# Without a .deb, one is built from target/debug/outpost (stripped, as the
# release package is). Needs root for dpkg (sudo is used otherwise), and
# refuses to touch a machine where an outpost package is installed already.
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root=()
[ "$(id -u)" -eq 0 ] || as_root=(sudo)
step() { printf '\n== %s (at %ds)\n' "$*" "$SECONDS"; }
fail() { echo "tests/package/run.sh: $*" >&2; exit 1; }

if dpkg-query -W -f='${Status}' outpost 2>/dev/null | grep -q installed; then
    fail "an outpost package is installed on this machine already; this test installs and purges its own, so run it elsewhere (or purge that one first)"
fi

step "tools"
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v adduser >/dev/null || missing+=(adduser)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    "${as_root[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

deb=${1:-}
if [ -z "$deb" ]; then
    step "package the debug build"
    [ -x target/debug/outpost ] || cargo build --quiet -p outpost-host --bin outpost
    deb=$(bash host/packaging/build-deb.sh --binary target/debug/outpost --out target/deb-test)
fi
dpkg-deb --info "$deb"

step "lintian"
lintian --pedantic --display-info --fail-on error,warning,info,pedantic "$deb" >target/lintian.txt 2>&1 ||
    { cat target/lintian.txt >&2; fail "lintian failed"; }
sed -i '/^running with root privileges/d' target/lintian.txt
cat target/lintian.txt
[ ! -s target/lintian.txt ] || fail "lintian reported the lines above"

work=$(mktemp -d)
server=""
cleanup() {
    [ -z "$server" ] || kill "$server" 2>/dev/null || true
    "${as_root[@]}" dpkg --purge outpost >/dev/null 2>&1 || true
    "${as_root[@]}" rm -f /etc/outpost/root.json
    "${as_root[@]}" rmdir /etc/outpost 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step "install"
"${as_root[@]}" dpkg -i "$deb"
getent passwd outpost | grep -q ':/var/lib/outpost:' || fail "no system user 'outpost' with home /var/lib/outpost"
[ "$(stat -c %a /usr/bin/outpost)" = 755 ] || fail "/usr/bin/outpost is not mode 755"
dpkg-query -W -f='${Conffiles}\n' outpost | grep -q '/etc/outpost/outpost.toml' ||
    fail "/etc/outpost/outpost.toml is not a conffile"
cmp host/outpost.toml /etc/outpost/outpost.toml || fail "the installed configuration differs from host/outpost.toml"
/usr/bin/outpost --version

step "systemd-analyze verify"
systemd-analyze verify /lib/systemd/system/outpost.service 2>&1 | tee "$work/verify.txt"
[ ! -s "$work/verify.txt" ] || fail "systemd-analyze verify printed the lines above"

step "a signed demo bundle, as a publisher makes it"
cargo plugins --quiet
pub=target/debug/outpost
$pub keygen --out "$work/publisher.key" >/dev/null
$pub root --key "$work/publisher.key.pub" --threshold 1 --expires 2030-01-01T00:00:00Z \
    --sign "$work/publisher.key" --out "$work/root.json" >/dev/null
$pub bundle host/pipelines/demo/intent.toml --name intent-demo --version 1 --out "$work/intent-demo" >/dev/null
$pub sign "$work/intent-demo" --key "$work/publisher.key" >/dev/null
$pub pack "$work/intent-demo" --out "$work/intent-demo.bundle" >/dev/null

step "the packaged service, run as its unit runs it"
# What systemd would do before ExecStart: StateDirectory=outpost.
"${as_root[@]}" install -d -o outpost -g outpost -m 0750 /var/lib/outpost /var/lib/outpost/bundles
"${as_root[@]}" install -o root -g root -m 0644 "$work/root.json" /etc/outpost/root.json
"${as_root[@]}" install -o outpost -g outpost -m 0640 "$work/intent-demo.bundle" /var/lib/outpost/bundles/
port=$((20000 + RANDOM % 20000))
"${as_root[@]}" tee /etc/outpost/outpost.toml >/dev/null <<EOF
bundles = ["/var/lib/outpost/bundles/intent-demo.bundle"]
trust = ["/etc/outpost/root.json"]
[listen]
http = "127.0.0.1:$port"
grpc = ""
EOF
exec_start=$(sed -n 's/^ExecStart=//p' /lib/systemd/system/outpost.service)
exec_check=$(sed -n 's/^ExecStartPre=//p' /lib/systemd/system/outpost.service)
as_service() {
    # setpriv execs (runuser would stay as a parent and turn SIGTERM into 143).
    "${as_root[@]}" setpriv --reuid=outpost --regid=outpost --init-groups --inh-caps=-all -- \
        env -i PATH=/usr/bin:/bin STATE_DIRECTORY=/var/lib/outpost OUTPOST_LOG=info "$@"
}
# shellcheck disable=SC2086 # the unit's command line, split as systemd splits it
as_service $exec_check
# A simple command, not the function, so that $! is the service itself.
# shellcheck disable=SC2086
"${as_root[@]}" setpriv --reuid=outpost --regid=outpost --init-groups --inh-caps=-all -- \
    env -i PATH=/usr/bin:/bin STATE_DIRECTORY=/var/lib/outpost OUTPOST_LOG=info $exec_start \
    2>"$work/serve.log" &
server=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; fail "the service exited while starting"; }
    sleep 0.1
done
answer=$(curl -sf -X POST "http://127.0.0.1:$port/v2/models/intent-demo/infer" -H 'content-type: application/json' \
    -d '{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["stop the conveyor"]}]}') ||
    { cat "$work/serve.log" >&2; fail "the served demo did not answer"; }
echo "$answer" | grep -q stop_conveyor || fail "unexpected answer: $answer"
"${as_root[@]}" ls /var/lib/outpost | grep -q . || fail "the service wrote no state to /var/lib/outpost"
kill -TERM "$server"
wait "$server" || { cat "$work/serve.log" >&2; fail "the service did not exit 0 after SIGTERM"; }
server=""
grep -q "engine ready" "$work/serve.log" || fail "the service did not log its engine layout"

step "outpost run from the package"
as_service /usr/bin/outpost run /var/lib/outpost/bundles/intent-demo.bundle --input "stop the conveyor" |
    grep -q '"stop_conveyor' || fail "the packaged outpost run did not label the demo"

step "an edited conffile survives reinstalling"
"${as_root[@]}" dpkg -i --force-confold "$deb" >/dev/null
grep -q 'intent-demo.bundle' /etc/outpost/outpost.toml || fail "reinstalling replaced the edited /etc/outpost/outpost.toml"

step "purge"
"${as_root[@]}" rm -f /etc/outpost/root.json
"${as_root[@]}" dpkg --purge outpost
for gone in /usr/bin/outpost /etc/outpost/outpost.toml /lib/systemd/system/outpost.service /var/lib/outpost; do
    [ ! -e "$gone" ] || fail "$gone is still there after purge"
done
echo "package: install, serve, run, upgrade and purge work"
