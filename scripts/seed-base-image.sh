#!/usr/bin/env bash
# Make sure the lab base image debian:bookworm-slim exists locally.
# Pull it when a registry is reachable; otherwise build an equivalent one with debootstrap.
set -euo pipefail

image="${STACKLAB_BASE_IMAGE:-debian:bookworm-slim}"
suite="${STACKLAB_BASE_SUITE:-bookworm}"
mirror="${STACKLAB_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image: $image already present"
    exit 0
fi

if timeout 60 docker pull -q "$image" >/dev/null 2>&1; then
    echo "base image: pulled $image"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    if [[ "$(id -u)" -eq 0 && -f /etc/debian_version ]]; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq debootstrap >/dev/null
    else
        echo "base image: cannot pull $image and debootstrap is missing; install debootstrap (as root)" \
            "or make a registry reachable." >&2
        exit 1
    fi
fi
if [[ "$(id -u)" -ne 0 ]]; then
    echo "base image: cannot pull $image; seeding it with debootstrap needs root." >&2
    exit 1
fi

# Give the seeded image the same apt/dpkg settings as the official slim image, so lab images
# built on it stay as small as online users' (no docs, no apt caches) and get security updates.
configure_like_slim() {
    local r="$1" security=""
    cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
CFG
    cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
    echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
    echo 'Acquire::GzipIndexes "true";' >"$r/etc/apt/apt.conf.d/docker-gzip-indexes"
    echo 'Apt::AutoRemove::SuggestsImportant "false";' >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
    if [[ "$mirror" == */debian ]]; then
        security="

Types: deb
URIs: ${mirror}-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
    fi
    rm -f "$r/etc/apt/sources.list"
    cat >"$r/etc/apt/sources.list.d/debian.sources" <<CFG
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg$security
CFG
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"

echo "base image: pull failed, seeding $image with debootstrap ($suite from $mirror)"
started=$SECONDS
if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
    tail -n 20 "$work/debootstrap.log" >&2
    echo "base image: debootstrap failed" >&2
    exit 1
fi
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* \
    "$root"/usr/share/doc "$root"/usr/share/man "$root"/usr/share/locale "$root"/usr/share/info
mkdir -p "$root"/var/lib/apt/lists/partial "$root"/var/cache/apt/archives/partial
configure_like_slim "$root"
tar --numeric-owner -C "$root" -c . |
    docker import -c 'CMD ["bash"]' -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        - "$image" >/dev/null
echo "base image: imported $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'), $((SECONDS - started)) s)"
