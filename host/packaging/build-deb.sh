#!/usr/bin/env bash
# Builds the outpost Debian package for amd64 or arm64 with dpkg-deb:
#   /usr/bin/outpost                      the host (stripped)
#   /etc/outpost/outpost.toml             the commented configuration (a conffile)
#   /lib/systemd/system/outpost.service   the hardened service (not enabled on install)
#   /usr/share/doc/outpost/               README, copyright, changelog
#   /usr/share/man/man1/outpost.1.gz
# ONNX Runtime is not in it: see the README ("Install on a device").
#
#   bash host/packaging/build-deb.sh [--arch amd64|arm64] [--profile dist|dist-small]
#                                    [--binary PATH] [--out DIR]
#
# Without --binary the host is built with the `dist` profile (or the one
# --profile names: `dist-small` is about half the size) for the
# architecture (arm64 cross-builds with Debian's gcc-aarch64-linux-gnu). With
# --binary a host built elsewhere is packaged (the tests package the debug
# build they already have). Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/../.."

arch=$(dpkg --print-architecture)
binary=""
profile=dist
out=target/deb
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --profile) profile="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        *) echo "build-deb.sh: unknown argument '$1' (see the comment at the top)" >&2; exit 2 ;;
    esac
done

case "$arch" in
    amd64) triple=x86_64-unknown-linux-gnu; strip=strip; objdump=objdump ;;
    arm64) triple=aarch64-unknown-linux-gnu; strip=aarch64-linux-gnu-strip; objdump=aarch64-linux-gnu-objdump ;;
    *) echo "build-deb.sh: --arch must be amd64 or arm64, not '$arch'" >&2; exit 2 ;;
esac
for tool in dpkg-deb "$strip" "$objdump" gzip; do
    command -v "$tool" >/dev/null || {
        echo "build-deb.sh: '$tool' is missing (apt install dpkg-dev binutils gcc-aarch64-linux-gnu)" >&2
        exit 1
    }
done

if [ -z "$binary" ]; then
    cargo build --profile "$profile" --target "$triple" -p outpost-host --bin outpost >&2
    binary="target/$triple/$profile/outpost"
fi
[ -f "$binary" ] || { echo "build-deb.sh: no host binary at $binary" >&2; exit 1; }
machine=$("$objdump" -f "$binary" | sed -n 's/^architecture: \([^,]*\).*/\1/p')
case "$arch:$machine" in
    amd64:i386:x86-64 | arm64:aarch64) ;;
    *) echo "build-deb.sh: $binary is built for '$machine', not $arch" >&2; exit 1 ;;
esac

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)-1
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root="$stage/outpost_${version}_$arch"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/etc/outpost" "$root/lib/systemd/system" \
    "$root/usr/share/doc/outpost" "$root/usr/share/man/man1"
install -m 0755 "$binary" "$root/usr/bin/outpost"
"$strip" --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/outpost"
install -m 0644 host/outpost.toml "$root/etc/outpost/outpost.toml"
install -m 0644 host/packaging/outpost.service "$root/lib/systemd/system/outpost.service"
install -m 0644 README.md "$root/usr/share/doc/outpost/README.md"
install -m 0644 host/packaging/deb/copyright "$root/usr/share/doc/outpost/copyright"
install -d -m 0755 "$root/usr/share/lintian/overrides"
install -m 0644 host/packaging/deb/lintian-overrides "$root/usr/share/lintian/overrides/outpost"

# Who built it: $DEBFULLNAME <$DEBEMAIL> (Debian's convention), else git's
# user, else the author of the commit packaged.
name=${DEBFULLNAME:-$(git config user.name || git log -1 --format=%an)}
email=${DEBEMAIL:-$(git config user.email || git log -1 --format=%ae)}
commit=$(git rev-parse --short=12 HEAD)
dirty=$(git status --porcelain --untracked-files=no | head -1)
{
    echo "outpost ($version) unstable; urgency=medium"
    echo
    echo "  * Built from commit $commit${dirty:+ with local changes}."
    echo
    echo " -- $name <$email>  $(git log -1 --format=%aD)"
} | gzip -9n >"$root/usr/share/doc/outpost/changelog.Debian.gz"
gzip -9n <host/packaging/deb/outpost.1 >"$root/usr/share/man/man1/outpost.1.gz"
chmod 0644 "$root/usr/share/doc/outpost/changelog.Debian.gz" "$root/usr/share/man/man1/outpost.1.gz"
for script in postinst postrm; do
    install -m 0755 "host/packaging/deb/$script" "$root/DEBIAN/$script"
done
echo /etc/outpost/outpost.toml >"$root/DEBIAN/conffiles"

# Dependencies from what the binary links: glibc at the newest symbol
# version it uses, and libgcc_s (unwinding: panics in a backend are caught).
glibc=$("$objdump" -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)
depends="libc6 (>= $glibc), libgcc-s1 (>= 4.2), adduser, init-system-helpers (>= 1.52)"
installed=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
cat >"$root/DEBIAN/control" <<EOF
Package: outpost
Version: $version
Architecture: $arch
Maintainer: $name <$email>
Installed-Size: $installed
Depends: $depends
Suggests: nginx-light
Section: net
Priority: optional
Description: edge inference host for signed WebAssembly pipelines
 Outpost runs signed, attested WebAssembly stages that pre- and post-process
 data and call wasi-nn for inference, served by tract (pure Rust) or ONNX
 Runtime. The outpost service serves the pipelines over KServe v2 (HTTP and
 gRPC) and follows a fleet's signed updates (TUF), swapping versions
 atomically, health-checking them and rolling back.
EOF

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) \
    >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control" "$root/DEBIAN/conffiles"

mkdir -p "$out"
deb="$out/outpost_${version}_$arch.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
