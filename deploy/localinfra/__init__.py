"""Local, Docker-free infrastructure for Leaseline: a Kafka broker and FerretDB.

Stdlib only, so it runs before any virtualenv exists::

    from deploy.localinfra import LocalFerretDB, LocalKafka, Profile

    profile = Profile.test()
    kafka, mongo = LocalKafka(profile), LocalFerretDB(profile)
    for component in (kafka, mongo):
        component.provision()
        component.start()
    kafka.wait_ready()
    mongo.wait_ready()
    ...  # use kafka.bootstrap_servers and mongo.uri
    kafka.stop()
    mongo.stop()

The same is available from the shell as ``python3 -m deploy.localinfra``.
"""

from ._base import LocalInfraError, ensure_running
from .ferretdb import LocalFerretDB
from .kafka import KAFKA_VERSION, LocalKafka
from .profile import Profile

__all__ = ["KAFKA_VERSION", "LocalFerretDB", "LocalInfraError", "LocalKafka", "Profile", "ensure_running"]
