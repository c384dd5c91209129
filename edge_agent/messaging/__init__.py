"""Getting results off the device: the envelope, the durable outbox, the MQTT link and publishers."""
