"""The wires between bastion's processes: typed msgpack messages over ZMQ and the child pipe."""
