# Shared by the hack/ scripts: the cache directory, the container engine and podman's
# settings for machines like ours. Source it; it defines variables and functions only.

z2m_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
z2m_cache="${Z2M_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/z2m}"
# Where images are built offline, the base is a Debian made with debootstrap; a machine
# that reaches Docker Hub builds on the public debian image instead.
z2m_local_base=localhost/z2m/debian:bookworm
z2m_version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$z2m_root/pyproject.toml" | head -1)

# The engine: Docker when it runs (stock kind), else podman with our settings.
z2m_engine() {
  if [ -n "${Z2M_ENGINE:-}" ]; then echo "$Z2M_ENGINE"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker
  else echo podman
  fi
}

z2m_podman_env() {
  export CONTAINERS_CONF="${CONTAINERS_CONF:-$z2m_root/hack/podman/containers.conf}"
  export KIND_EXPERIMENTAL_PROVIDER=podman
}

z2m_apt() { # install Debian packages when a command is missing: z2m_apt <command> <package>...
  local cmd=$1
  shift
  command -v "$cmd" >/dev/null && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  echo "z2m: installing Debian packages: $*" >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

# The Debian mirror apt already uses on this machine.
z2m_mirror() {
  local uri
  uri=$(grep -h -E '^(URIs:|deb )' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | grep -v security | head -1 | awk '{print $2}')
  echo "${uri:-http://deb.debian.org/debian}"
}

# A minimal Debian bookworm image made with debootstrap, carrying this machine's CA bundle
# so that builds on it reach the same package indexes the host does.
z2m_base_image() {
  z2m_podman_env
  podman image exists "$z2m_local_base" && return 0
  z2m_apt debootstrap debootstrap
  local rootfs="$z2m_cache/rootfs-bookworm"
  rm -rf "$rootfs"
  echo "z2m: debootstrap bookworm for the base image" >&2
  debootstrap --variant=minbase bookworm "$rootfs" "$(z2m_mirror)" >/dev/null || return 1
  mkdir -p "$rootfs/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import - "$z2m_local_base" >/dev/null
  rm -rf "$rootfs"
}
