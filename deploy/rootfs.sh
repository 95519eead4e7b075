#!/bin/sh
# Lays out the root filesystem of the ssegate image in DIR, for a
# `FROM scratch` image: the binary (without debug info), the shared
# libraries it links as `ldd` lists them, at the paths where the dynamic
# loader looks for them, the loader itself, the CA bundle (for rediss://
# and other TLS connections), and passwd, group and nsswitch.conf files.
#
#   deploy/rootfs.sh BINARY DIR
#
# deploy/Dockerfile runs it in its build stage (DIR is /out/rootfs there);
# run on the host, it makes the image from a binary built there (see
# deploy/README.md). The libraries come from the machine that built the
# binary, so they are the ones it was linked against.
set -eu

if [ "$#" -ne 2 ]; then
  echo "usage: $0 BINARY DIR" >&2
  exit 2
fi
binary=$1
root=$2

if [ ! -x "$binary" ]; then
  echo "$0: $binary is not an executable" >&2
  exit 1
fi
if [ -e "$root" ] && [ -n "$(ls -A "$root")" ]; then
  echo "$0: $root is not empty" >&2
  exit 1
fi

# The binary, without its debug info: the release profile keeps line tables
# for profiling on the host, four fifths of the file. Symbols stay, so a
# backtrace still names functions.
for tool in objcopy ldd; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$0: $tool is missing (binutils, libc-bin)" >&2
    exit 1
  fi
done
install -d -m 0755 "$root/usr/local/bin"
objcopy --strip-debug "$binary" "$root/usr/local/bin/ssegate"
chmod 0755 "$root/usr/local/bin/ssegate"

# What it links. `ldd` prints `name => /path (addr)` for each library and
# `/path (addr)` for the loader; a static binary has neither.
libs=$(ldd "$binary" 2>/dev/null | grep -o '/[^ ]*' || true)
for lib in $libs; do
  # Dereferenced: the image holds files, whatever the host's symlinks.
  install -D -m 0755 "$lib" "$root$lib"
done

# The CA bundle, where rustls-native-certs looks first on Linux
# (SSL_CERT_FILE overrides it at run time).
bundle=
for candidate in "${SSL_CERT_FILE:-}" \
  /etc/ssl/certs/ca-certificates.crt \
  /etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem \
  /etc/pki/tls/certs/ca-bundle.crt; do
  if [ -n "$candidate" ] && [ -s "$candidate" ]; then
    bundle=$candidate
    break
  fi
done
if [ -z "$bundle" ]; then
  echo "$0: no CA bundle found (install ca-certificates, or set SSL_CERT_FILE)" >&2
  exit 1
fi
install -D -m 0644 "$bundle" "$root/etc/ssl/certs/ca-certificates.crt"

# The user the image runs as (65532, as in distroless images), and name
# resolution through /etc/hosts first, then DNS (glibc's default without
# nsswitch.conf asks DNS first). glibc 2.34 and later have both lookups
# built in: no libnss_*.so to copy.
install -d -m 0755 "$root/etc"
cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat > "$root/etc/group" <<'EOF'
root:x:0:
nonroot:x:65532:
EOF
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
chmod 0644 "$root/etc/passwd" "$root/etc/group" "$root/etc/nsswitch.conf"
