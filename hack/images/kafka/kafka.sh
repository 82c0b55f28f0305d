#!/bin/sh
# Start a single-node KRaft Kafka (broker and controller in one process) from the jars in
# $KAFKA_LIBS. Configured as the official apache/kafka image is: defaults for one node
# below, then every KAFKA_FOO_BAR variable becomes the property foo.bar (__ stands for _,
# ___ for -), so z2m's pod spec works with either image. The storage is formatted on
# first boot only: a log dir that already holds meta.properties (the pod's volume after a
# restart) starts as it is, with its topics and committed offsets. The image runs this;
# the tests run it on loopback too.
#
# Not properties: KAFKA_LIBS (/opt/kafka/libs), KAFKA_HEAP_OPTS (-Xmx384m -Xms384m),
# KAFKA_LOG4J (log4j2.properties beside this script), KAFKA_CONFIG_DIR (/tmp/kafka-config),
# CLUSTER_ID (a random one on first boot).
set -eu
libs=${KAFKA_LIBS:-/opt/kafka/libs}
data=${KAFKA_LOG_DIRS:-/var/lib/kafka/data}
conf=${KAFKA_CONFIG_DIR:-/tmp/kafka-config}
here=$(dirname "$0")
mkdir -p "$data" "$conf"
{
  cat <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:9093
listeners=PLAINTEXT://:9092,CONTROLLER://127.0.0.1:9093
advertised.listeners=PLAINTEXT://$(hostname -f):9092,CONTROLLER://127.0.0.1:9093
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=false
PROPS
  # Later lines win: the environment overrides the defaults above.
  env | while IFS='=' read -r name value; do
    case $name in
      KAFKA_LIBS | KAFKA_HEAP_OPTS | KAFKA_OPTS | KAFKA_LOG4J | KAFKA_CONFIG_DIR) ;;
      KAFKA_*)
        key=$(printf '%s' "${name#KAFKA_}" | tr 'A-Z' 'a-z' |
          sed -e 's/___/-/g' -e 's/__/\x01/g' -e 's/_/./g' -e 's/\x01/_/g')
        printf '%s=%s\n' "$key" "$value"
        ;;
    esac
  done
} >"$conf/server.properties"
log4j=${KAFKA_LOG4J:-$here/log4j2.properties}
java="java ${KAFKA_HEAP_OPTS:--Xmx384m -Xms384m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20 ${KAFKA_OPTS:-}"
java="$java -Dlog4j2.configurationFile=$log4j -cp $libs/*"
# $java is split into words on purpose; the class path's * is for Java, not the shell.
set -f
if [ ! -f "$data/meta.properties" ]; then
  # shellcheck disable=SC2086
  id=${CLUSTER_ID:-$($java kafka.tools.StorageTool random-uuid)}
  # shellcheck disable=SC2086
  $java kafka.tools.StorageTool format -t "$id" -c "$conf/server.properties" --standalone
fi
# shellcheck disable=SC2086
exec $java kafka.Kafka "$conf/server.properties"
