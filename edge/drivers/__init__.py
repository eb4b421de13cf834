"""Device drivers: register maps (pure data and codecs) and the generic Modbus reader.

Kept import-light on purpose: importing `edge.drivers.register_map` must not pull in pymodbus,
so the pure core stays usable (and testable) without a transport. Import
`edge.drivers.modbus_generic` explicitly where a live device is read.
"""
