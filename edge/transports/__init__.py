"""Transports: the wires and sockets devices are read over.

`edge.transports.modbus_bus` owns Modbus buses: one serialised owner per RS-485 port or per
Modbus TCP endpoint, shared by every device configured on it. Import it explicitly (it pulls in
pymodbus); this package itself stays import-light.
"""
