#!/usr/bin/env bash
# Start PostgreSQL and RabbitMQ when they are installed but stopped (the CI machine normally runs both).
set -u
up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if ! up 5432 && command -v pg_ctlcluster >/dev/null; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
fi
if ! up 5672 && command -v rabbitmq-server >/dev/null; then
  rabbitmq-server -detached || true
  for _ in $(seq 30); do up 5672 && break; sleep 1; done
fi
up 5432 && echo "PostgreSQL up" || echo "PostgreSQL down"
up 5672 && echo "RabbitMQ up" || echo "RabbitMQ down"
