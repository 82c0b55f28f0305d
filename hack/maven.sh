#!/usr/bin/env bash
# Fetch the runtime jars a pom.xml names from Maven Central, once, into the cache.
# Kafka and OpenSearch come from their Maven Central artifacts here: the tests run them
# on loopback from these jars, and hack/images.sh copies them into an image's build
# context (as jars/) when hack/images/<name>/pom.xml exists. The cache key is the
# pom's hash, so a changed version fetches again and an unchanged one never does.
#
#   hack/maven.sh <name>   # prints the directory holding hack/images/<name>/pom.xml's jars
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"

name=${1:?usage: hack/maven.sh <name>}
pom="$z2m_root/hack/images/$name/pom.xml"
[ -f "$pom" ] || { echo "z2m: no $pom" >&2; exit 2; }
key=$(sha256sum <"$pom" | cut -c1-16)
out="$z2m_cache/maven/$name-$key"
if [ ! -f "$out/.done" ]; then
  command -v mvn >/dev/null || z2m_apt mvn maven
  rm -rf "$out.partial"
  mkdir -p "$out.partial"
  start=$SECONDS
  if ! mvn -q -B -f "$pom" -Dmaven.repo.local="$z2m_cache/maven/repository" \
    dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$out.partial" >"$out.partial.log" 2>&1; then
    tail -n 30 "$out.partial.log" >&2
    echo "z2m: fetching $name's jars failed; the whole log is $out.partial.log" >&2
    exit 1
  fi
  touch "$out.partial/.done"
  rm -rf "$out"
  mv "$out.partial" "$out"
  # Older fetches of the same name are of no more use.
  find "$z2m_cache/maven" -maxdepth 1 -name "$name-*" ! -path "$out" -exec rm -rf {} +
  echo "z2m: $name: $(find "$out" -name '*.jar' | wc -l) jars in $((SECONDS - start)) s" >&2
fi
echo "$out"
