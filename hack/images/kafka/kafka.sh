#!/bin/sh
# Start a single-node KRaft Kafka (broker and controller in one process) from the jars in
# $KAFKA_LIBS. The storage is formatted on first boot only: a data dir that already holds
# meta.properties (the pod's volume after a restart) is started as it is, with its topics
# and committed offsets. The image runs this; the tests run it on loopback too.
#
# KAFKA_LIBS (/opt/kafka/libs), KAFKA_DATA (/var/lib/kafka/data), KAFKA_PORT (9092),
# KAFKA_CONTROLLER_PORT (9093), KAFKA_LISTEN_HOST (0.0.0.0), KAFKA_ADVERTISED_HOST (the
# pod's name as the headless Service spells it, else `hostname -f`), KAFKA_NUM_PARTITIONS
# (1), KAFKA_HEAP_OPTS (-Xmx384m -Xms384m).
set -eu
libs=${KAFKA_LIBS:-/opt/kafka/libs}
data=${KAFKA_DATA:-/var/lib/kafka/data}
port=${KAFKA_PORT:-9092}
cport=${KAFKA_CONTROLLER_PORT:-9093}
listen=${KAFKA_LISTEN_HOST:-0.0.0.0}
advertised=${KAFKA_ADVERTISED_HOST:-$(hostname -f)}
conf=${KAFKA_CONFIG_DIR:-/tmp/kafka-config}
here=$(dirname "$0")
mkdir -p "$data" "$conf"
cat >"$conf/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://$listen:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://$advertised:$port,CONTROLLER://127.0.0.1:$cport
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data
num.partitions=${KAFKA_NUM_PARTITIONS:-1}
offsets.topic.replication.factor=1
offsets.topic.num.partitions=${KAFKA_OFFSETS_PARTITIONS:-10}
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
log4j=${KAFKA_LOG4J:-$here/log4j2.properties}
java="java ${KAFKA_HEAP_OPTS:--Xmx384m -Xms384m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20"
java="$java -Dlog4j2.configurationFile=$log4j -cp $libs/*"
# $java is split into words on purpose; the class path's * is for Java, not the shell.
set -f
if [ ! -f "$data/meta.properties" ]; then
  # shellcheck disable=SC2086
  id=${KAFKA_CLUSTER_ID:-$($java kafka.tools.StorageTool random-uuid)}
  # shellcheck disable=SC2086
  $java kafka.tools.StorageTool format -t "$id" -c "$conf/server.properties" --standalone
fi
# shellcheck disable=SC2086
exec $java kafka.Kafka "$conf/server.properties"
