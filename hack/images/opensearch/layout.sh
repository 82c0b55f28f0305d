#!/bin/sh
# Lay out an OpenSearch home from the jars hack/maven.sh fetched (hack/images/opensearch/pom.xml):
# lib/ with the server's jars, one folder per module under modules/ with its jars, a
# plugin-descriptor.properties and a plugin-security.policy (the Maven artifacts carry
# neither), and config/ with log4j2.properties and an opensearch.yml for one node.
# Whoever runs the node must be able to write config/ (the keystore is made there).
# The image runs it at build time; the tests run it into a temporary directory.
#
#   layout.sh <jars-dir> <home>
set -eu
jars=${1:?usage: layout.sh <jars-dir> <home>}
home=${2:?usage: layout.sh <jars-dir> <home>}
version=2.19.6

mkdir -p "$home/bin" "$home/lib" "$home/config" "$home/plugins" \
  "$home/modules/transport-netty4" "$home/modules/lang-painless" "$home/modules/analysis-common"

for jar in "$jars"/*.jar; do
  case $(basename "$jar") in
    transport-netty4-client-* | netty-*) dest=modules/transport-netty4 ;;
    lang-painless-* | opensearch-scripting-painless-spi-* | antlr4-runtime-* | asm-*) dest=modules/lang-painless ;;
    analysis-common-*) dest=modules/analysis-common ;;
    *) dest=lib ;;
  esac
  cp "$jar" "$home/$dest/"
done

# descriptor <module> <class> [extended plugins]
descriptor() {
  cat >"$home/modules/$1/plugin-descriptor.properties" <<PROPS
description=$1, from its Maven Central artifact
version=$version
name=$1
classname=$2
java.version=17
opensearch.version=$version
extended.plugins=${3:-}
has.native.controller=false
PROPS
}
descriptor transport-netty4 org.opensearch.transport.Netty4Plugin
descriptor lang-painless org.opensearch.painless.PainlessPlugin
descriptor analysis-common org.opensearch.analysis.common.CommonAnalysisPlugin lang-painless

# The modules' own policies, as the distribution ships them.
cat >"$home/modules/transport-netty4/plugin-security.policy" <<'POLICY'
grant {
  permission java.io.FilePermission "/proc/sys/net/core/somaxconn", "read";
  permission java.net.SocketPermission "*", "accept,connect,resolve";
  permission java.lang.RuntimePermission "*", "setContextClassLoader";
  permission java.lang.RuntimePermission "getClassLoader";
  permission java.util.PropertyPermission "sun.nio.ch.bugLevel", "write";
};
POLICY
cat >"$home/modules/lang-painless/plugin-security.policy" <<'POLICY'
grant {
  permission java.lang.RuntimePermission "createClassLoader";
  permission java.lang.RuntimePermission "getClassLoader";
};
POLICY
printf 'grant {\n};\n' >"$home/modules/analysis-common/plugin-security.policy"

cat >"$home/config/log4j2.properties" <<'LOG'
status = error
appender.console.type = Console
appender.console.name = console
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d{ISO8601}][%-5p][%-25c{1.}] [%node_name]%marker %m%n
rootLogger.level = info
rootLogger.appenderRef.console.ref = console
LOG

# One node, no security plugin (none is installed): the cluster's NetworkPolicy and
# Service are its boundary. Settings the pod or the test passes on the command line
# (-E) win over these.
cat >"$home/config/opensearch.yml" <<'YML'
cluster.name: z2m
discovery.type: single-node
network.host: 0.0.0.0
http.port: 9200
transport.port: 9300
action.auto_create_index: false
YML
