#!/bin/sh
# Start OpenSearch with its real bootstrap, from a home laid out by layout.sh: the image's
# entry point, and what the tests run on loopback. Like the official image's:
#   - OPENSEARCH_JAVA_OPTS holds the JVM's options (default: a 256 MiB heap);
#   - every environment variable named like a setting (discovery.type=single-node)
#     becomes -E<name>=<value>; arguments are passed on as they are.
# OPENSEARCH_HOME, OPENSEARCH_DATA and OPENSEARCH_LOGS say where the home, the index data
# and the logs are (default: /usr/share/opensearch, and data/ and logs/ in it).
set -eu
home=${OPENSEARCH_HOME:-/usr/share/opensearch}
settings=$(env | grep -E '^[a-z0-9_]+(\.[a-z0-9_]+)+=' || true)
old_ifs=$IFS
IFS='
'
for setting in $settings; do set -- "$@" "-E$setting"; done
IFS=$old_ifs
# One log4j context for the whole JVM: with log4j's default, per-class-loader look-up, the
# shutdown hook was refused getClassLoader by the security manager in a container (java
# as pid 1), and the node ignored SIGTERM until it was killed 30 s later.
# shellcheck disable=SC2086 # the options are words, as the official image splits them
exec java ${OPENSEARCH_JAVA_OPTS:--Xms256m -Xmx256m} \
  -Dlog4j2.contextSelector=org.apache.logging.log4j.core.selector.BasicContextSelector \
  -Dopensearch.path.home="$home" -Dopensearch.path.conf="$home/config" \
  -Dopensearch.distribution.type=tar -Djava.security.manager=allow \
  -Djava.io.tmpdir="${TMPDIR:-/tmp}" \
  -cp "$home/lib/*" org.opensearch.bootstrap.OpenSearch \
  -Epath.data="${OPENSEARCH_DATA:-$home/data}" -Epath.logs="${OPENSEARCH_LOGS:-$home/logs}" "$@"
