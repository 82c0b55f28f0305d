#!/usr/bin/env bash
# The images z2m's pods run, built the same way everywhere: the operator, the sample app
# and Debian-packaged PostgreSQL, Redis, RabbitMQ, nginx and Prometheus with Alertmanager,
# and Kafka and OpenSearch from their Maven Central jars (hack/images/<name>/). Each is tagged
# docker.io/z2m/<name>:<version> and saved as an archive in the cache, keyed by a hash of
# its build context; an image whose inputs did not change is not built again.
# Docker builds on the public debian:bookworm-slim; podman on the debootstrap base of
# hack/lib.sh, which needs no registry.
#
#   hack/images.sh build [name...]   # build what changed (default: all), one line per image
#   hack/images.sh load <cluster>    # build, then load every archive into a kind cluster
#   hack/images.sh list              # the image names
#   hack/images.sh refs              # the full references, docker.io/z2m/<name>:<version>
#
# Z2M_ENGINE=docker|podman picks the engine; Z2M_CACHE the cache root (default ~/.cache/z2m).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

images=(operator sample-app postgres redis rabbitmq nginx prometheus kafka opensearch)
# Bump when this script changes the images it makes from the same inputs.
recipe=1
cache="$z2m_cache/images"

log() { echo "z2m: $*" >&2; }
ref() { echo "docker.io/z2m/$1:$z2m_version"; }

dockerfile() {
  case $1 in
    operator) echo "$z2m_root/Dockerfile" ;;
    sample-app) echo "$z2m_root/sample_app/Dockerfile" ;;
    *) echo "$z2m_root/hack/images/$1/Dockerfile" ;;
  esac
}

# The build context of an image, as paths relative to the directory it prints first.
context() {
  case $1 in
    operator | sample-app)
      echo "$z2m_root"
      (cd "$z2m_root" && {
        echo pyproject.toml
        echo README.md
        find operator sample_app -type f ! -name Dockerfile ! -name '*.pyc' \
          ! -path '*/__pycache__/*' ! -path '*.egg-info/*'
      } | LC_ALL=C sort)
      ;;
    *)
      echo "$z2m_root/hack/images/$1"
      (cd "$z2m_root/hack/images/$1" && find . -type f ! -name Dockerfile | LC_ALL=C sort)
      ;;
  esac
}

# key <name>: a hash of everything the image is made of.
key() {
  local dir
  {
    echo "recipe $recipe engine $engine base $base $base_id"
    sha256sum <"$(dockerfile "$1")"
    context "$1" | {
      read -r dir
      cd "$dir"
      tr '\n' '\0' | xargs -0 -r sha256sum
    }
  } | sha256sum | cut -c1-16
}

# build_one <name> <key> <archive>: build into the engine's store, then save the archive.
build_one() {
  local name=$1 key=$2 archive=$3 ctx dir old new
  old=$("$engine" image inspect --format '{{.Id}}' "$(ref "$name")" 2>/dev/null || true)
  ctx=$(mktemp -d)
  # A copy of exactly the hashed files, so that nothing else (caches, venvs) reaches the build.
  context "$name" | {
    read -r dir
    tar -C "$dir" -cf - -T - | tar -C "$ctx" -xf -
  }
  cp "$(dockerfile "$name")" "$ctx/Dockerfile"
  # An image made of Maven Central artifacts gets them as jars/ (hack/maven.sh); the pom
  # is part of the hashed context, so the key follows the versions it names.
  if [ -f "$ctx/pom.xml" ]; then
    mkdir -p "$ctx/jars"
    cp "$("$z2m_root/hack/maven.sh" "$name")"/*.jar "$ctx/jars/"
  fi
  local args=(build -t "$(ref "$name")" --label "z2m.key=$key" -f "$ctx/Dockerfile")
  if [ "$engine" = podman ]; then
    # Docker's format keeps HEALTHCHECK, which the OCI format drops.
    args+=(--format docker --build-arg "BASE=$base")
  fi
  if ! "$engine" "${args[@]}" "$ctx" >"$cache/$name.log" 2>&1; then
    rm -rf "$ctx"
    tail -n 30 "$cache/$name.log" >&2
    log "$name: build failed; the whole log is $cache/$name.log"
    return 1
  fi
  rm -rf "$ctx"
  # The image this one replaces, now untagged; kept if something still uses it.
  new=$("$engine" image inspect --format '{{.Id}}' "$(ref "$name")")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then "$engine" rmi "$old" >/dev/null 2>&1 || true; fi
  save "$name" "$archive"
}

save() {
  rm -f "$2.partial"
  if ! "$engine" save -o "$2.partial" "$(ref "$1")" >"$cache/$1.save.log" 2>&1; then
    cat "$cache/$1.save.log" >&2
    rm -f "$2.partial"
    return 1
  fi
  mv "$2.partial" "$2"
  # Older archives of the same image are of no more use.
  find "$cache" -maxdepth 1 -name "$1-*.tar" ! -path "$2" -delete
}

# ensure <name>: the image in the store and its archive in the cache; prints one line.
ensure() {
  local name=$1 start=$SECONDS k archive have status
  k=$(key "$name")
  archive="$cache/$name-$k.tar"
  have=$("$engine" image inspect --format '{{index .Config.Labels "z2m.key"}}' "$(ref "$name")" \
    2>/dev/null || true)
  if [ "$have" = "$k" ] && [ -s "$archive" ]; then
    status=cached
  elif [ "$have" = "$k" ]; then
    save "$name" "$archive"
    status="cached, archive saved"
  elif [ -s "$archive" ]; then
    "$engine" load -q -i "$archive" >/dev/null
    status="cached, loaded from $archive"
  else
    build_one "$name" "$k" "$archive"
    status=built
  fi
  printf '%-10s %-36s %s in %d s\n' "$name" "$(ref "$name")" "$status" $((SECONDS - start))
  archives+=("$archive")
}

build() {
  local start=$SECONDS name
  [ $# -gt 0 ] || set -- "${images[@]}"
  for name in "$@"; do
    [ -f "$(dockerfile "$name")" ] || { log "no image $name (images: ${images[*]})"; return 2; }
  done
  mkdir -p "$cache"
  if [ "$engine" = podman ]; then
    z2m_base_image
    base=$z2m_local_base
    base_id=$(podman image inspect --format '{{.Id}}' "$base")
  fi
  for name in "$@"; do ensure "$name"; done
  echo "z2m: $# images in $((SECONDS - start)) s"
}

engine=$(z2m_engine)
[ "$engine" = podman ] && z2m_podman_env
base=debian:bookworm-slim
base_id=""
archives=()

case "${1:-}" in
  build)
    shift
    build "$@"
    ;;
  load)
    cluster=${2:?usage: hack/images.sh load <kind-cluster-name>}
    kind="$("$z2m_root/hack/build-binaries.sh")/kind"
    clusters=$("$kind" get clusters 2>/dev/null)
    grep -qx "$cluster" <<<"$clusters" || { log "no kind cluster $cluster"; exit 1; }
    build
    for archive in "${archives[@]}"; do
      start=$SECONDS
      "$kind" load image-archive "$archive" --name "$cluster"
      echo "z2m: loaded $(basename "$archive") into $cluster in $((SECONDS - start)) s"
    done
    ;;
  list) printf '%s\n' "${images[@]}" ;;
  refs) for name in "${images[@]}"; do ref "$name"; done ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
