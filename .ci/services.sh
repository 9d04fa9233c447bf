#!/usr/bin/env bash
# Start PostgreSQL and RabbitMQ when they are installed but stopped (the CI machine normally runs both), and
# switch RabbitMQ's consumer timeout off: AiiDA holds a process's task unacknowledged until the process ends,
# so with the 30-minute default any longer work chain has its channel closed and its task re-delivered
# (docs/reliability.md, "Consumer timeout"). Persistent in advanced.config, and applied to the running node
# at once (new channels only: start daemons after this script).
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if command -v rabbitmq-server >/dev/null && [ -w /etc/rabbitmq ] && ! grep -qs consumer_timeout /etc/rabbitmq/advanced.config; then
  if [ -s /etc/rabbitmq/advanced.config ]; then
    echo "/etc/rabbitmq/advanced.config exists without consumer_timeout: add {consumer_timeout, undefined} to its rabbit section" >&2
  else
    echo "[{rabbit, [{consumer_timeout, undefined}]}]." > /etc/rabbitmq/advanced.config
  fi
fi
if ! up 5672 && command -v rabbitmq-server >/dev/null; then
  rabbitmq-server -detached || true
  for _ in $(seq 30); do up 5672 && break; sleep 1; done
fi
if up 5672 && command -v rabbitmqctl >/dev/null; then
  rabbitmqctl eval 'application:set_env(rabbit, consumer_timeout, undefined).' >/dev/null || true
  echo "RabbitMQ consumer_timeout: $(rabbitmqctl eval 'application:get_env(rabbit, consumer_timeout).' 2>/dev/null)"
fi
up 5432 && echo "PostgreSQL up" || echo "PostgreSQL down"
up 5672 && echo "RabbitMQ up" || echo "RabbitMQ down"
