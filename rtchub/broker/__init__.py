"""Many nodes as one: the Broker interface, its engines, and the Cluster glue.

``--broker memory`` (default) is one node and installs nothing; ``--broker
redis://host:port/db`` makes the node part of a cluster (docs/scaling.md).
"""

from rtchub.broker.base import Broker, BrokerDown, make_broker

__all__ = ["Broker", "BrokerDown", "make_broker"]
