"""Create or reuse the AiiDA profile, the localhost computer and the ``battgen`` code.

Two kinds of profile:

* embedded (default): ``core.sqlite_dos`` storage and AiiDA's ZeroMQ broker — no services at all, yet the
  daemon and ``submit`` work;
* ``postgres=True``: ``core.psql_dos`` on PostgreSQL + RabbitMQ, for many processes through the daemon.

Everything here is idempotent: an existing profile, computer or code with the same name is reused.
"""

from __future__ import annotations

import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_PROFILE = "battgen"  # what `setup` and `demo` create; every other command reads `-p` or AiiDA's default
DEFAULT_PROFILE = DEMO_PROFILE
LOCALHOST_LABEL = "localhost"
BATTGEN_CODE_LABEL = "battgen"


class ServiceUnavailableError(RuntimeError):
    """PostgreSQL or RabbitMQ cannot be reached; the message says which and where."""


@dataclass
class PostgresSettings:
    host: str = "127.0.0.1"
    port: int = 5432
    superuser: str = "postgres"
    password: str | None = None
    database: str | None = None  # default: aiida_<profile name>


@dataclass
class RabbitmqSettings:
    host: str = "127.0.0.1"
    port: int = 5672
    username: str = "guest"
    password: str = "guest"
    virtual_host: str = ""


def _port_open(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def create_postgres_database(settings: PostgresSettings, database: str) -> None:
    """Create the database (UTF8, C.UTF-8 collation, from template0) unless it exists."""
    import psycopg

    if not _port_open(settings.host, settings.port):
        raise ServiceUnavailableError(
            f"PostgreSQL is not reachable at {settings.host}:{settings.port}; start it (e.g. "
            "`pg_ctlcluster <version> main start`) or use the embedded profile (no --postgres)."
        )
    try:
        with psycopg.connect(
            host=settings.host, port=settings.port, user=settings.superuser, password=settings.password,
            dbname="postgres", autocommit=True, connect_timeout=5,
        ) as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists:
                # C.UTF-8 exists on Debian without generating locales (en_US.UTF-8 often does not).
                connection.execute(
                    f'CREATE DATABASE "{database}" ENCODING \'UTF8\' LC_COLLATE=\'C.UTF-8\' '
                    "LC_CTYPE='C.UTF-8' TEMPLATE=template0"
                )
    except psycopg.OperationalError as exc:
        raise ServiceUnavailableError(f"cannot connect to PostgreSQL as {settings.superuser!r}: {exc}") from exc


def drop_postgres_database(settings: PostgresSettings, database: str) -> None:
    import psycopg

    with psycopg.connect(
        host=settings.host, port=settings.port, user=settings.superuser, password=settings.password,
        dbname="postgres", autocommit=True, connect_timeout=5,
    ) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def rabbitmq_broker_config(settings: RabbitmqSettings) -> dict[str, Any]:
    from aiida.brokers.rabbitmq.defaults import detect_rabbitmq_config

    if not _port_open(settings.host, settings.port):
        raise ServiceUnavailableError(
            f"RabbitMQ is not reachable at {settings.host}:{settings.port}; start it (`rabbitmq-server -detached`)"
            " or use the embedded profile (no --postgres), which needs no broker service."
        )
    try:
        return detect_rabbitmq_config(
            host=settings.host, port=settings.port, username=settings.username, password=settings.password,
            virtual_host=settings.virtual_host,
        )
    except ConnectionError as exc:
        raise ServiceUnavailableError(f"RabbitMQ refused the connection: {exc}") from exc


def ensure_profile(
    name: str = DEFAULT_PROFILE,
    *,
    postgres: bool | None = False,
    postgres_settings: PostgresSettings | None = None,
    rabbitmq_settings: RabbitmqSettings | None = None,
    email: str = "battgen@localhost",
    set_default: bool | None = None,
) -> tuple[Any, bool]:
    """Load profile ``name``, creating it first if needed. Returns (profile, created).

    ``postgres=None`` accepts an existing profile of either storage and creates an embedded one if missing.
    ``set_default``: make it AiiDA's default profile (True), never (False), or only when created (None).
    """
    from aiida import load_profile
    from aiida.manage.configuration import create_profile, get_config
    from aiida.plugins import BrokerFactory

    config = get_config(create=True)
    if name in config.profile_names:
        profile = config.get_profile(name)
        wanted = "core.psql_dos" if postgres else "core.sqlite_dos"
        if postgres is not None and profile.storage_backend != wanted:
            raise ValueError(
                f"profile {name!r} exists with storage {profile.storage_backend!r}, not {wanted!r}; "
                "choose another --profile name"
            )
        if set_default and config.default_profile_name != name:
            _set_default(config, name)
        load_profile(name, allow_switch=True)
        return profile, False

    if postgres:  # None or False: embedded
        pg = postgres_settings or PostgresSettings()
        database = pg.database or f"aiida_{name}"
        broker_config = rabbitmq_broker_config(rabbitmq_settings or RabbitmqSettings())
        create_postgres_database(pg, database)
        storage_backend = "core.psql_dos"
        storage_config = {
            "database_engine": "postgresql_psycopg",
            "database_hostname": pg.host,
            "database_port": pg.port,
            "database_username": pg.superuser,
            "database_password": pg.password or "",
            "database_name": database,
            "repository_uri": f"file://{Path(config.dirpath) / 'repository' / name}",
        }
        broker_backend = "core.rabbitmq"
    else:
        storage_backend = "core.sqlite_dos"
        storage_config = {}
        broker_backend = "core.zeromq"  # no service: AiiDA starts the ZeroMQ broker with the daemon
        broker_config = BrokerFactory(broker_backend).get_default_config()

    profile = create_profile(
        config, name=name, email=email, storage_backend=storage_backend, storage_config=storage_config,
        broker_backend=broker_backend, broker_config=broker_config,
    )
    config.set_option("runner.poll.interval", 1, scope=profile.name)
    config.store()
    if set_default is not False and config.default_profile_name != profile.name:
        _set_default(config, profile.name)
    load_profile(profile.name, allow_switch=True)
    return profile, True


def _set_default(config, name: str) -> None:
    config.set_default_profile(name, overwrite=True)
    config.store()


def ensure_localhost(label: str = LOCALHOST_LABEL):
    """The localhost computer (core.local transport, core.direct scheduler), configured."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida.manage.configuration import get_config, get_profile

    try:
        computer = orm.load_computer(label)
    except NotExistent:
        scratch = Path(get_config().dirpath) / "scratch" / get_profile().name
        computer = orm.Computer(
            label=label, hostname="localhost", description="localhost (aiida-battgen setup)",
            transport_type="core.local", scheduler_type="core.direct", workdir=str(scratch),
        ).store()
        computer.set_minimum_job_poll_interval(0.5)
        computer.set_default_mpiprocs_per_machine(1)
    if not computer.is_user_configured(orm.User.collection.get_default()):
        computer.configure(safe_interval=0)
    return computer


def battgen_executable() -> str:
    """The ``battgen`` console script of this environment."""
    beside_python = Path(sys.executable).parent / "battgen"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("battgen")
    if not found:
        raise FileNotFoundError("the `battgen` executable is not installed in this environment (pip install -e .)")
    return found


def ensure_battgen_code(computer, label: str = BATTGEN_CODE_LABEL):
    """An InstalledCode running this environment's ``battgen`` CLI on ``computer``."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        return orm.load_code(f"{label}@{computer.label}")
    except (NotExistent, MultipleObjectsError):
        pass
    code = orm.InstalledCode(
        label=label, computer=computer, filepath_executable=battgen_executable(),
        description="battgen science CLI (aiida-battgen)", default_calc_job_plugin="battgen.mlip.relax",
    )
    return code.store()


def setup_all(name: str = DEFAULT_PROFILE, postgres: bool | None = False, **kwargs: Any) -> dict[str, Any]:
    """Profile + localhost + battgen code; returns what was created or reused, and
    ``default_changed_from`` (the previous default profile, or None) when AiiDA's default changed."""
    from aiida.manage.configuration import get_config

    previous_default = get_config(create=True).default_profile_name
    profile, created = ensure_profile(name, postgres=postgres, **kwargs)
    computer = ensure_localhost()
    code = ensure_battgen_code(computer)
    result = {"profile": profile, "profile_created": created, "computer": computer, "code": code}
    if get_config().default_profile_name != previous_default:
        result["default_changed_from"] = previous_default
    return result
